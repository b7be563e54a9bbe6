// llama_prepare: text files (or fortune(6) directories) -> train.bin / val.bin of byte tokens.
//   llama_prepare --out data/fortunes /usr/share/games/fortunes

#include <tenax/core/error.h>

#include <iostream>
#include <string>
#include <vector>

#include "data.h"

int main(int argc, char** argv) {
  std::string out;
  std::vector<std::string> inputs;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--out" && i + 1 < argc) {
      out = argv[++i];
    } else if (a.rfind("--out=", 0) == 0) {
      out = a.substr(6);
    } else {
      inputs.push_back(a);
    }
  }
  if (out.empty() || inputs.empty()) {
    std::cerr << "usage: llama_prepare --out DIR FILE_OR_DIR...\n";
    return 2;
  }
  try {
    auto r = llama::prepare_byte_corpus(inputs, out);
    std::cout << "llama_prepare: " << r.documents << " documents -> " << out << "/train.bin ("
              << r.train_tokens << " tokens), " << out << "/val.bin (" << r.val_tokens
              << " tokens); byte-level, vocabulary 256, uint16\n";
  } catch (const tenax::Error& e) {
    std::cerr << "llama_prepare: " << e.what() << "\n";
    return 2;
  }
  return 0;
}
