#include "tenax/observe/exposition.h"

#include <map>
#include <sstream>

namespace tenax::observe {

std::string merge_expositions(const std::vector<std::string>& texts) {
  struct Family {
    std::string help, type;
    std::string samples;
  };
  std::vector<std::string> order;
  std::map<std::string, Family> families;
  for (const std::string& text : texts) {
    std::istringstream in(text);
    std::string line, current;
    while (std::getline(in, line)) {
      if (line.empty()) continue;
      if (line.rfind("# HELP ", 0) == 0 || line.rfind("# TYPE ", 0) == 0) {
        const size_t end = line.find(' ', 7);
        current = line.substr(7, end == std::string::npos ? std::string::npos : end - 7);
        if (!families.count(current)) order.push_back(current);
        Family& f = families[current];
        std::string& slot = line[2] == 'H' ? f.help : f.type;
        if (slot.empty()) slot = line;
        continue;
      }
      if (line[0] == '#') continue;
      if (current.empty()) {  // a sample with no family header: its own family
        current = line.substr(0, line.find_first_of("{ "));
        if (!families.count(current)) order.push_back(current);
      }
      families[current].samples += line + "\n";
    }
  }
  std::string out;
  for (const std::string& name : order) {
    const Family& f = families[name];
    if (f.samples.empty()) continue;
    if (!f.help.empty()) out += f.help + "\n";
    if (!f.type.empty()) out += f.type + "\n";
    out += f.samples;
  }
  return out;
}

}  // namespace tenax::observe
