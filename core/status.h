// Status helpers shared by every library: early-return macros (Debian's abseil predates
// ABSL_RETURN_IF_ERROR) and conversion of errno values at the edge.
#ifndef TIERKV_CORE_STATUS_H_
#define TIERKV_CORE_STATUS_H_

#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define TIERKV_STATUS_CONCAT_INNER_(a, b) a##b
#define TIERKV_STATUS_CONCAT_(a, b) TIERKV_STATUS_CONCAT_INNER_(a, b)

// Returns the status of `expr` from the enclosing function when it is not OK.
#define TIERKV_RETURN_IF_ERROR(expr)                   \
  do {                                                 \
    ::absl::Status _tierkv_status = (expr);            \
    if (!_tierkv_status.ok()) return _tierkv_status;   \
  } while (0)

// `TIERKV_ASSIGN_OR_RETURN(auto x, MakeX());` declares x from a StatusOr's value, or returns
// its status from the enclosing function.
#define TIERKV_ASSIGN_OR_RETURN(lhs, expr) \
  TIERKV_ASSIGN_OR_RETURN_IMPL_(TIERKV_STATUS_CONCAT_(_tierkv_statusor_, __LINE__), lhs, expr)
#define TIERKV_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                                  \
  if (!tmp.ok()) return std::move(tmp).status();      \
  lhs = std::move(tmp).value()

namespace tierkv {

// Maps an errno value to the closest canonical code, with `context` and strerror in the
// message (ENOSPC -> RESOURCE_EXHAUSTED, ENOENT -> NOT_FOUND, EIO -> DATA_LOSS, ...).
absl::Status ErrnoToStatus(int err, std::string_view context);

}  // namespace tierkv

#endif  // TIERKV_CORE_STATUS_H_
