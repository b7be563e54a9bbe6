#pragma once

// Everything a training program needs from tenax in one include.

#include "tenax/comm/communicator.h"
#include "tenax/comm/init.h"
#include "tenax/comm/store.h"
#include "tenax/core/error.h"
