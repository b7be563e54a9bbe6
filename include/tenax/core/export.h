#pragma once

// TENAX_API marks what libtenax.so exports: the declarations of include/tenax/. The library is
// built with hidden visibility, so everything else (tenax::detail, the implementation) stays
// inside it.

#define TENAX_API __attribute__((visibility("default")))
// For the implementation: what an exported class nests (its Impl), or a type that template
// instantiations in the library are made with, stays hidden all the same.
#define TENAX_INTERNAL __attribute__((visibility("hidden")))
