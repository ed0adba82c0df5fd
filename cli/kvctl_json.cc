#include "cli/kvctl_json.h"

#include <cmath>
#include <string_view>

#include <google/protobuf/descriptor.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/block_key.h"

namespace tierkv::kvctl {
namespace {

using google::protobuf::Descriptor;
using google::protobuf::FieldDescriptor;
using google::protobuf::Message;
using google::protobuf::Reflection;

void AppendQuoted(std::string_view s, std::string& out) {
  out += '"';
  for (char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          out += absl::StrFormat("\\u%04x", static_cast<unsigned char>(c));
        } else {
          out += c;  // UTF-8 passes through: proto strings are valid UTF-8.
        }
    }
  }
  out += '"';
}

std::string Double(double v) {
  // proto3 JSON spells the non-finite values as strings.
  if (std::isnan(v)) return "\"NaN\"";
  if (std::isinf(v)) return v > 0 ? "\"Infinity\"" : "\"-Infinity\"";
  return absl::StrFormat("%.17g", v);
}

// Writes one message; `depth` is the nesting level of the object being written.
class JsonWriter {
 public:
  explicit JsonWriter(bool pretty) : pretty_(pretty) {}

  void WriteMessage(const Message& m, int depth) {
    const Descriptor* d = m.GetDescriptor();
    const Reflection* r = m.GetReflection();
    out_ += '{';
    bool first = true;
    for (int i = 0; i < d->field_count(); ++i) {
      const FieldDescriptor* f = d->field(i);
      if (!f->is_repeated() && f->has_presence() && !r->HasField(m, f)) continue;
      out_ += first ? "" : ",";
      first = false;
      NewLine(depth + 1);
      AppendQuoted(f->name(), out_);
      out_ += pretty_ ? ": " : ":";
      if (!f->is_repeated()) {
        WriteValue(m, f, -1, depth + 1);
        continue;
      }
      int n = r->FieldSize(m, f);
      out_ += '[';
      for (int j = 0; j < n; ++j) {
        if (j > 0) out_ += ',';
        NewLine(depth + 2);
        WriteValue(m, f, j, depth + 2);
      }
      if (n > 0) NewLine(depth + 1);
      out_ += ']';
    }
    if (!first) NewLine(depth);
    out_ += '}';
  }

  std::string Take() { return std::move(out_); }

 private:
  void NewLine(int depth) {
    if (!pretty_) return;
    out_ += '\n';
    out_.append(2 * depth, ' ');
  }

  // The value of singular field `f` (index < 0) or of element `index` of repeated `f`.
  void WriteValue(const Message& m, const FieldDescriptor* f, int index, int depth) {
    const Reflection* r = m.GetReflection();
    const bool rep = index >= 0;
    switch (f->cpp_type()) {
      case FieldDescriptor::CPPTYPE_INT32:
        out_ += absl::StrCat(rep ? r->GetRepeatedInt32(m, f, index) : r->GetInt32(m, f));
        break;
      case FieldDescriptor::CPPTYPE_INT64:
        out_ += absl::StrCat(rep ? r->GetRepeatedInt64(m, f, index) : r->GetInt64(m, f));
        break;
      case FieldDescriptor::CPPTYPE_UINT32:
        out_ += absl::StrCat(rep ? r->GetRepeatedUInt32(m, f, index) : r->GetUInt32(m, f));
        break;
      case FieldDescriptor::CPPTYPE_UINT64: {
        uint64_t v = rep ? r->GetRepeatedUInt64(m, f, index) : r->GetUInt64(m, f);
        if (f->type() == FieldDescriptor::TYPE_FIXED64) {
          out_ += absl::StrFormat("\"%016x\"", v);
        } else {
          out_ += absl::StrCat(v);
        }
        break;
      }
      case FieldDescriptor::CPPTYPE_DOUBLE:
        out_ += Double(rep ? r->GetRepeatedDouble(m, f, index) : r->GetDouble(m, f));
        break;
      case FieldDescriptor::CPPTYPE_FLOAT:
        out_ += Double(rep ? r->GetRepeatedFloat(m, f, index) : r->GetFloat(m, f));
        break;
      case FieldDescriptor::CPPTYPE_BOOL:
        out_ += (rep ? r->GetRepeatedBool(m, f, index) : r->GetBool(m, f)) ? "true" : "false";
        break;
      case FieldDescriptor::CPPTYPE_ENUM: {
        int v = rep ? r->GetRepeatedEnumValue(m, f, index) : r->GetEnumValue(m, f);
        const auto* value = f->enum_type()->FindValueByNumber(v);
        // An enum value newer than this kvctl prints as its number, as proto3 JSON does.
        if (value != nullptr) {
          AppendQuoted(value->name(), out_);
        } else {
          out_ += absl::StrCat(v);
        }
        break;
      }
      case FieldDescriptor::CPPTYPE_STRING: {
        std::string scratch;
        const std::string& v = rep ? r->GetRepeatedStringReference(m, f, index, &scratch)
                                   : r->GetStringReference(m, f, &scratch);
        if (f->type() == FieldDescriptor::TYPE_BYTES) {
          AppendQuoted(ToHex(std::string_view(v)), out_);
        } else {
          AppendQuoted(v, out_);
        }
        break;
      }
      case FieldDescriptor::CPPTYPE_MESSAGE:
        WriteMessage(rep ? r->GetRepeatedMessage(m, f, index) : r->GetMessage(m, f), depth);
        break;
    }
  }

  const bool pretty_;
  std::string out_;
};

}  // namespace

std::string ProtoToJson(const google::protobuf::Message& message, bool pretty) {
  JsonWriter writer(pretty);
  writer.WriteMessage(message, 0);
  return writer.Take();
}

}  // namespace tierkv::kvctl
