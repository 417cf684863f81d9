#include "fsdp/launch/stop_signals.h"

#include <algorithm>
#include <cctype>
#include <cstring>
#include <stdexcept>
#include <utility>

namespace fsdp::launch {
namespace {

// Written only by the handler (async-signal-safe: a plain store).
volatile std::sig_atomic_t first_signal = 0;

extern "C" void record_signal(int signal) {
  if (first_signal == 0) first_signal = signal;
}

struct NamedSignal {
  const char* name;
  int number;
};
constexpr NamedSignal kSignals[] = {{"TERM", SIGTERM}, {"INT", SIGINT},   {"HUP", SIGHUP},
                                    {"USR1", SIGUSR1}, {"USR2", SIGUSR2}, {"XCPU", SIGXCPU}};

}  // namespace

std::vector<int> parse_stop_signals(const std::string& names) {
  std::vector<int> signals;
  std::size_t begin = 0;
  while (begin < names.size()) {
    const std::size_t end = std::min(names.find(',', begin), names.size());
    std::string name = names.substr(begin, end - begin);
    begin = end + 1;
    std::transform(name.begin(), name.end(), name.begin(),
                   [](unsigned char c) { return static_cast<char>(std::toupper(c)); });
    if (name.rfind("SIG", 0) == 0) name = name.substr(3);
    const auto* found = std::find_if(std::begin(kSignals), std::end(kSignals),
                                     [&](const NamedSignal& s) { return name == s.name; });
    if (found == std::end(kSignals)) {
      throw std::invalid_argument("unknown signal '" + name.substr(0, 20) +
                                  "' (expected TERM, INT, HUP, USR1, USR2 or XCPU)");
    }
    if (std::find(signals.begin(), signals.end(), found->number) == signals.end()) {
      signals.push_back(found->number);
    }
  }
  return signals;
}

std::string signal_name(int signal) {
  for (const auto& named : kSignals) {
    if (named.number == signal) return std::string("SIG") + named.name;
  }
  return "signal " + std::to_string(signal);
}

StopSignals::StopSignals(std::vector<int> signals)
    : signals_(std::move(signals)), previous_(signals_.size()) {
  first_signal = 0;
  struct sigaction action {};
  action.sa_handler = record_signal;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESTART;  // a signal must not fail a read or a collective with EINTR
  for (std::size_t i = 0; i < signals_.size(); ++i) {
    sigaction(signals_[i], &action, &previous_[i]);
  }
}

StopSignals::~StopSignals() {
  for (std::size_t i = 0; i < signals_.size(); ++i) sigaction(signals_[i], &previous_[i], nullptr);
}

int StopSignals::received() const { return first_signal; }

}  // namespace fsdp::launch
