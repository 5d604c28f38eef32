#pragma once
/// @file checkpoint.hpp
/// Training checkpoints that resume bit-identically and are never loaded when damaged.
///
/// A checkpoint is one directory `step-NNNNNNNN/` under a root (the run's `checkpoints/`):
///
/// | file | content |
/// |---|---|
/// | `student.safetensors` | the student's parameters in their own dtype (`io::save_weights`: loadable alone) |
/// | `training.safetensors` | `extra.<name>` (parameters of other owners: loss projections), `optimizer.<state>` (every
/// optimizer state tensor), `data.order` (I64, the epoch's example order) | | `manifest.json` | format name and
/// version, step, optimizer step count, each file's size and CRC-32C, the training loop's state (epoch, position, RNG,
/// early stopping, ...), a copy of the job config, and the CRC-32C of the manifest itself |
///
/// Files attached by the writer (`CheckpointStore::save`'s `attach`: a ZeRO-1 run's
/// `optimizer-shard-R-of-N.safetensors`, train/zero.hpp, whose optimizer state is then not in
/// training.safetensors) are moved in before the manifest, which lists and checks them like the rest.
///
/// The directory is written under a temporary name, every file fsynced, renamed into place and the
/// root fsynced; only then does the `latest` pointer file (atomically replaced) name it. A crash at
/// any moment leaves the previous checkpoint and pointer intact. `best` names the checkpoint with the
/// best validation loss; retention (`keep_last_n`) never deletes the one `latest` or `best` names.
///
/// Loading verifies everything before touching anything: manifest checksum and format version, each
/// file's size (a truncation) and CRC-32C (a flipped bit), the safetensors structure, and that every
/// tensor the model, the extra owners and the optimizer expect is present with the exact shape and
/// dtype. Only then are bytes copied. A refused checkpoint throws `format_error` naming the file and
/// the defect; no target has been modified.

#include <algorithm>
#include <array>
#include <charconv>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <type_traits>
#include <vector>

#include <unistd.h>

#include <nlohmann/json.hpp>

#include "distill/detail/hash.hpp"
#include "distill/error.hpp"
#include "distill/io/durable.hpp"
#include "distill/io/reflect.hpp"
#include "distill/io/safetensors.hpp"
#include "distill/io/weights.hpp"
#include "distill/optimizer.hpp"
#include "distill/parameter.hpp"

namespace distill::io {

/// The checkpoint format this build writes and the only one it reads.
inline constexpr int checkpoint_format_version = 1;
/// The `format` field of every manifest.
inline constexpr const char* checkpoint_format_name = "distill-checkpoint";

/// The safetensors dtype holding `T` exactly (checkpoints never convert, so resume is bit-exact).
template <class T>
constexpr dtype exact_dtype() {
    static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "checkpoints hold float or double");
    return std::is_same_v<T, float> ? dtype::F32 : dtype::F64;
}

namespace detail {

/// A tensor to write byte for byte.
struct raw_tensor {
    std::string name;
    dtype type;
    std::vector<std::int64_t> shape;
    const void* data;
};

inline std::vector<std::int64_t> shape_of(const auto& tensor) {
    return {tensor.shape().begin(), tensor.shape().begin() + tensor.rank()};
}

/// Writes `tensors` as a safetensors file, atomically, copying bytes without conversion, with the
/// checksum entry `io::save_tensors` writes (see `io/safetensors.hpp`).
inline void write_raw(const std::filesystem::path& path, std::span<const raw_tensor> tensors,
                      const std::map<std::string, std::string>& metadata) {
    std::map<std::string, std::string> meta = metadata;
    meta.erase(std::string(checksum_key));
    nlohmann::ordered_json header = nlohmann::ordered_json::object();
    if (!meta.empty()) header["__metadata__"] = meta;
    std::uint64_t offset = 0;
    std::vector<std::uint64_t> sizes;
    for (const auto& t : tensors) {
        const std::uint64_t n =
            static_cast<std::uint64_t>(*distill::detail::checked_numel(t.shape, dtype_size(t.type)));
        const std::uint64_t bytes = n * dtype_size(t.type);
        header[t.name] = {{"dtype", dtype_name(t.type)},
                          {"shape", t.shape},
                          {"data_offsets", nlohmann::ordered_json::array({offset, offset + bytes})}};
        offset += bytes;
        sizes.push_back(bytes);
    }
    std::uint32_t crc = distill::detail::header_checksum(nlohmann::json::parse(header.dump()));
    for (std::size_t i = 0; i < tensors.size(); ++i) crc = distill::detail::crc32c(tensors[i].data, sizes[i], crc);
    meta[std::string(checksum_key)] = distill::detail::hex32(crc);
    header["__metadata__"] = meta;
    std::string text = header.dump();
    text.append((8 - text.size() % 8) % 8, ' ');
    const std::uint64_t header_size = text.size();
    atomic_writer writer(path);
    writer.write(&header_size, sizeof header_size);
    writer.write(text.data(), text.size());
    for (std::size_t i = 0; i < tensors.size(); ++i) writer.write(tensors[i].data, sizes[i]);
    writer.commit();
}

/// Size and CRC-32C of a whole file, read through a mapping.
inline std::pair<std::uint64_t, std::uint32_t> file_digest(const std::filesystem::path& path) {
    const io::mapped_file map(path);
    const auto bytes = map.bytes();
    return {bytes.size(), distill::detail::crc32c(bytes.data(), bytes.size())};
}

/// CRC-32C of the manifest's compact JSON without its "checksum" member.
inline std::uint32_t manifest_checksum(nlohmann::json manifest) {
    manifest.erase("checksum");
    const std::string text = manifest.dump();
    return distill::detail::crc32c(text.data(), text.size());
}

inline std::string step_name(std::int64_t step) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "step-%08lld", static_cast<long long>(step));
    return buf;
}

/// The step of a directory name `step-N`, or nullopt if it is not one.
inline std::optional<std::int64_t> parse_step_name(std::string_view name) {
    if (!name.starts_with("step-") || name.size() == 5) return std::nullopt;
    std::int64_t step = 0;
    const char* first = name.data() + 5;
    const char* last = name.data() + name.size();
    const auto [ptr, ec] = std::from_chars(first, last, step);
    if (ec != std::errc{} || ptr != last || step < 0) return std::nullopt;
    return step;
}

}  // namespace detail

/// A checkpoint directory, opened and verified (manifest checksum and version, every file's size and
/// CRC-32C, safetensors structure); nothing has been loaded into a model yet. Move-only.
class Checkpoint {
public:
    /// The largest manifest.json accepted.
    static constexpr std::size_t max_manifest_bytes = 64u << 20;

    /// Opens and verifies `dir`. Throws format_error naming the file and the defect (missing file,
    /// truncation, checksum mismatch, other format version, malformed manifest) or io_error.
    static Checkpoint open(const std::filesystem::path& dir) {
        Checkpoint c;
        c.dir_ = dir;
        const auto manifest_path = dir / "manifest.json";
        if (!std::filesystem::exists(manifest_path))
            throw format_error(manifest_path, 0, "missing: " + dir.string() + " is not a complete checkpoint");
        const io::mapped_file map(manifest_path);
        const auto bytes = map.bytes();
        // A manifest is kilobytes (the job config and the loop's state); a huge one is not ours, and
        // parsing it would cost many times its size in memory.
        if (bytes.size() > max_manifest_bytes)
            throw format_error(manifest_path, 0,
                               "is " + std::to_string(bytes.size()) + " bytes, over the limit of " +
                                   std::to_string(max_manifest_bytes) + "; the checkpoint is refused");
        nlohmann::json m =
            nlohmann::json::parse(reinterpret_cast<const char*>(bytes.data()),
                                  reinterpret_cast<const char*>(bytes.data()) + bytes.size(), nullptr, false);
        if (m.is_discarded() || !m.is_object())
            throw format_error(manifest_path, 0,
                               "is not valid JSON (truncated or corrupted); the checkpoint is refused");
        try {
            c.read_manifest(m, manifest_path);
        } catch (const nlohmann::json::exception& e) {
            throw format_error(manifest_path, 0,
                               std::string("malformed manifest (") + e.what() + "); the checkpoint is refused");
        }
        c.student_.emplace(dir / "student.safetensors");
        c.training_.emplace(dir / "training.safetensors");
        return c;
    }

private:
    Checkpoint() = default;

    void read_manifest(const nlohmann::json& m, const std::filesystem::path& manifest_path) {
        const std::filesystem::path& dir = dir_;
        Checkpoint& c = *this;
        auto field = [&](const char* key) -> const nlohmann::json& {
            auto it = m.find(key);
            if (it == m.end()) throw format_error(manifest_path, 0, std::string("has no \"") + key + "\" field");
            return *it;
        };
        if (!field("format").is_string() || field("format").get<std::string>() != checkpoint_format_name)
            throw format_error(manifest_path, 0,
                               std::string("is not a distill checkpoint manifest (\"format\" is not \"") +
                                   checkpoint_format_name + "\")");
        if (!field("version").is_number_integer() || field("version").get<std::int64_t>() != checkpoint_format_version)
            throw format_error(manifest_path, 0,
                               "checkpoint format version " + field("version").dump() +
                                   ", but this build of distill reads only version " +
                                   std::to_string(checkpoint_format_version) + "; the checkpoint is refused");
        if (!field("checksum").is_number_unsigned() ||
            field("checksum").get<std::uint64_t>() != detail::manifest_checksum(m))
            throw format_error(manifest_path, 0,
                               "checksum mismatch: the manifest was modified or corrupted; the checkpoint is refused");
        // Numbers are checked for their kind before get<>(): converting a float out of range is undefined.
        auto integer = [&](const char* key) {
            const nlohmann::json& v = field(key);
            if (!v.is_number_integer() || (v.is_number_unsigned() && v.get<std::uint64_t>() > INT64_MAX))
                throw format_error(manifest_path, 0, std::string("\"") + key + "\" is not a 64-bit integer");
            return v.get<std::int64_t>();
        };
        auto unsigned_at = [&](const nlohmann::json& f, const char* key, std::uint64_t max) {
            const nlohmann::json& v = f.at(key);
            if (!v.is_number_unsigned() || v.get<std::uint64_t>() > max)
                throw format_error(manifest_path, 0,
                                   std::string("\"files\": \"") + key + "\" is not an integer in range");
            return v.get<std::uint64_t>();
        };
        c.step_ = integer("step");
        c.optimizer_steps_ = integer("optimizer_steps");
        c.state_ = field("state");
        c.config_ = field("config");
        c.scalar_ = field("scalar_type").get<std::string>();
        const nlohmann::json& files = field("files");
        if (!files.is_object()) throw format_error(manifest_path, 0, "\"files\" is not an object");
        std::vector<std::string> names{"student.safetensors", "training.safetensors"};
        for (const auto& [name, info] : files.items()) {  // attached files (ZeRO-1 optimizer shards)
            if (name == names[0] || name == names[1]) continue;
            if (name.empty() || name.find('/') != std::string::npos || name.starts_with("."))
                throw format_error(manifest_path, 0, "\"files\" lists \"" + name + "\", not a file name");
            names.push_back(name);
            attached_.push_back(name);
        }
        for (const std::string& name : names) {
            const auto path = dir / name;
            const nlohmann::json& f = files;
            if (!f.contains(name)) throw format_error(manifest_path, 0, std::string("does not list ") + name);
            if (!std::filesystem::exists(path)) throw format_error(path, 0, "missing from the checkpoint");
            const auto [size, crc] = detail::file_digest(path);
            const auto want_size = unsigned_at(f[name], "bytes", UINT64_MAX);
            if (size != want_size)
                throw format_error(path, 0,
                                   "has " + std::to_string(size) + " bytes, the manifest records " +
                                       std::to_string(want_size) +
                                       " (truncated or partially written); the checkpoint is refused");
            if (crc != unsigned_at(f[name], "crc32c", UINT32_MAX))
                throw format_error(path, 0,
                                   "CRC-32C mismatch (a flipped bit or a modified file); the checkpoint is refused");
        }
    }

public:
    /// The checkpoint directory.
    const std::filesystem::path& path() const noexcept { return dir_; }
    /// The training step at which it was written.
    std::int64_t step() const noexcept { return step_; }
    /// The training loop's state as saved.
    const nlohmann::json& state() const noexcept { return state_; }
    /// The job configuration copy.
    const nlohmann::json& config() const noexcept { return config_; }
    /// The verified student weights file (usable with `io::load_weights`).
    const safetensors_file& student_file() const { return *student_; }
    /// The files attached to it besides the student and training files (verified like them).
    const std::vector<std::string>& attached() const noexcept { return attached_; }
    /// The verified training file (extra parameters, optimizer state, data order).
    const safetensors_file& training_file() const { return *training_; }

    /// Loads the student, the extra parameters, the optimizer (state tensors and step count) and the
    /// data order. Every name, shape and dtype is checked first; on any mismatch it throws
    /// format_error or shape_error naming the tensor and nothing is modified.
    /// @tparam Model a student (parameters(), config()). @tparam Optimizer an `optimizer_policy`.
    template <class Model, class Optimizer>
    /// With `optimizer_state` false the optimizer's state tensors are neither expected nor loaded
    /// (any `optimizer.*` tensor is left for the caller: ZeRO-1 re-slices them); its step count is.
    void restore(Model& model, std::span<const Parameter<typename Model::scalar_type>> extra, Optimizer& optimizer,
                 std::vector<std::int64_t>& data_order, bool optimizer_state = true) const {
        using T = typename Model::scalar_type;
        static_assert(std::is_same_v<T, typename Optimizer::scalar_type>, "model and optimizer scalar types differ");
        const dtype want = exact_dtype<T>();
        if (scalar_ != std::string(dtype_name(want)))
            throw format_error(
                dir_ / "manifest.json", 0,
                "was written by a " + scalar_ + " run; this run trains in " + std::string(dtype_name(want)));

        struct copy_job {
            const tensor_info* info;
            const safetensors_file* file;
            T* target;
        };
        std::vector<copy_job> jobs;
        auto expect = [&](const safetensors_file& file, const std::string& name, const Tensor<T>& target,
                          std::set<std::string>& seen) {
            const tensor_info* info = file.find(name);
            if (!info) throw format_error(file.path(), 0, "has no tensor '" + name + "' (the run expects it)");
            const auto shape = detail::shape_of(target);
            if (info->shape != shape)
                throw shape_error(file.path().string() + ": tensor '" + name + "' has shape " +
                                  distill::detail::shape_string(info->shape) + ", the run expects " +
                                  distill::detail::shape_string(shape));
            if (info->type != want)
                throw format_error(file.path(), 0,
                                   "tensor '" + name + "' is " + std::string(dtype_name(info->type)) + ", expected " +
                                       std::string(dtype_name(want)));
            seen.insert(name);
            jobs.push_back({info, &file, target.data()});
        };
        auto no_others = [&](const safetensors_file& file, const std::set<std::string>& seen) {
            for (const auto& t : file.tensors())
                if (!seen.contains(t.name))
                    throw format_error(file.path(), 0,
                                       "holds tensor '" + t.name +
                                           "' that this run does not have "
                                           "(written for another model, loss or optimizer)");
        };

        // The student's config must be the model's (a clearer message than the first shape mismatch).
        const auto& meta = student_->metadata();
        if (auto it = meta.find("config"); it != meta.end()) {
            const auto saved = nlohmann::json::parse(it->second, nullptr, false);
            const auto mine = to_json(model.config());
            if (saved != mine)
                throw format_error(student_->path(), 0,
                                   "was written for student " + it->second + ", this run's student is " + mine.dump());
        }
        std::set<std::string> seen_student, seen_training;
        for (const auto& p : model.parameters()) expect(*student_, p.name, p.value, seen_student);
        no_others(*student_, seen_student);
        for (const auto& p : extra) expect(*training_, "extra." + p.name, p.value, seen_training);
        if (optimizer_state) {
            for (const auto& s : optimizer.state()) expect(*training_, "optimizer." + s.name, s.value, seen_training);
        } else {
            for (const auto& t : training_->tensors())
                if (t.name.starts_with("optimizer.")) seen_training.insert(t.name);
        }
        const tensor_info* order = training_->find("data.order");
        if (!order || order->type != dtype::I64 || order->shape.size() != 1)
            throw format_error(training_->path(), 0, "has no I64 vector 'data.order'");
        seen_training.insert("data.order");
        no_others(*training_, seen_training);
        if (optimizer_steps_ < 0) throw format_error(dir_ / "manifest.json", 0, "optimizer_steps is negative");

        // Everything checked: copy.
        for (const auto& j : jobs) {
            const auto src = j.file->bytes(*j.info);
            std::memcpy(j.target, src.data(), src.size());
        }
        const auto order_bytes = training_->bytes(*order);
        data_order.resize(static_cast<std::size_t>(order->numel()));
        if (!order_bytes.empty()) std::memcpy(data_order.data(), order_bytes.data(), order_bytes.size());
        optimizer.set_steps(optimizer_steps_);
    }

private:
    std::filesystem::path dir_;
    std::int64_t step_ = 0, optimizer_steps_ = 0;
    nlohmann::json state_, config_;
    std::string scalar_;
    std::vector<std::string> attached_;
    std::optional<safetensors_file> student_, training_;
};

/// The checkpoints of one run under `root`: writing, the `latest` and `best` pointers, retention.
class CheckpointStore {
public:
    /// Uses (and creates) `root`; removes temporary directories left by a crash mid-write.
    explicit CheckpointStore(std::filesystem::path root) : root_(std::move(root)) {
        std::error_code ec;
        std::filesystem::create_directories(root_, ec);
        if (ec) throw io_error(root_, "cannot create the checkpoint directory: " + ec.message());
        for (const auto& entry : std::filesystem::directory_iterator(root_)) {
            const std::string name = entry.path().filename().string();
            if (name.starts_with("step-") &&
                (name.find(".tmp.") != std::string::npos || name.find(".old.") != std::string::npos))
                std::filesystem::remove_all(entry.path(), ec);
        }
    }

    /// The directory holding the checkpoints and pointers.
    const std::filesystem::path& root() const noexcept { return root_; }

    /// Writes the checkpoint of `step` and points `latest` at it (see the file comment); returns its
    /// directory. An existing checkpoint of the same step is replaced atomically.
    /// @tparam Model a student. @tparam Optimizer an `optimizer_policy` with the same scalar type.
    template <class Model, class Optimizer>
    std::filesystem::path save(std::int64_t step, const Model& model,
                               std::span<const Parameter<typename Model::scalar_type>> extra,
                               const Optimizer& optimizer, std::span<const std::int64_t> data_order,
                               const nlohmann::json& state, const nlohmann::json& config,
                               std::span<const std::filesystem::path> attach = {}, bool optimizer_state = true) {
        using T = typename Model::scalar_type;
        const std::string name = detail::step_name(step);
        const auto final_dir = root_ / name;
        const auto tmp = root_ / (name + ".tmp." + std::to_string(::getpid()));
        std::error_code ec;
        std::filesystem::remove_all(tmp, ec);
        if (!std::filesystem::create_directory(tmp, ec) || ec)
            throw io_error(tmp, "cannot create checkpoint directory: " + ec.message());

        save_weights(tmp / "student.safetensors", model, exact_dtype<T>());
        std::vector<detail::raw_tensor> tensors;
        for (const auto& p : extra)
            tensors.push_back({"extra." + p.name, exact_dtype<T>(), detail::shape_of(p.value), p.value.data()});
        if (optimizer_state)
            for (const auto& s : optimizer.state())
                tensors.push_back({"optimizer." + s.name, exact_dtype<T>(), detail::shape_of(s.value), s.value.data()});
        tensors.push_back(
            {"data.order", dtype::I64, {static_cast<std::int64_t>(data_order.size())}, data_order.data()});
        detail::write_raw(tmp / "training.safetensors", tensors, {});

        nlohmann::json manifest;
        manifest["format"] = checkpoint_format_name;
        manifest["version"] = checkpoint_format_version;
        manifest["step"] = step;
        manifest["optimizer_steps"] = optimizer.steps();
        manifest["scalar_type"] = dtype_name(exact_dtype<T>());
        // Attached files (ZeRO-1: each rank's optimizer shard, written durably by its rank) move in
        // before the manifest that lists them, so the checkpoint commits with them.
        std::vector<std::string> files{"student.safetensors", "training.safetensors"};
        for (const auto& f : attach) {
            rename_or_throw(f, tmp / f.filename());
            files.push_back(f.filename().string());
        }
        if (!attach.empty()) distill::detail::fsync_parent_directory(tmp / files.back());
        for (const auto& file : files) {
            const auto [size, crc] = detail::file_digest(tmp / file);
            manifest["files"][file] = {{"bytes", size}, {"crc32c", crc}};
        }
        manifest["state"] = state;
        manifest["config"] = config;
        manifest["checksum"] = detail::manifest_checksum(manifest);
        write_file_atomic(tmp / "manifest.json", manifest.dump(1) + "\n");

        // Swap into place. rename() cannot replace a non-empty directory, so an older checkpoint of the
        // same step (a rerun after resuming) is first moved aside and removed after the swap.
        if (std::filesystem::exists(final_dir)) {
            const auto old = root_ / (name + ".old." + std::to_string(::getpid()));
            std::filesystem::remove_all(old, ec);
            rename_or_throw(final_dir, old);
            rename_or_throw(tmp, final_dir);
            std::filesystem::remove_all(old, ec);
        } else {
            rename_or_throw(tmp, final_dir);
        }
        distill::detail::fsync_parent_directory(final_dir);
        set_pointer("latest", name);
        return final_dir;
    }

    /// The checkpoint `latest` names, or nullopt before the first save. Throws format_error when the
    /// pointer is malformed or names a directory that does not exist.
    std::optional<std::filesystem::path> latest() const { return pointer("latest"); }
    /// The checkpoint `best` names (see `set_best`), or nullopt.
    std::optional<std::filesystem::path> best() const { return pointer("best"); }
    /// Points `best` at the checkpoint directory `dir` (under root).
    void set_best(const std::filesystem::path& dir) { set_pointer("best", dir.filename().string()); }

    /// Every checkpoint directory, oldest step first.
    std::vector<std::filesystem::path> list() const {
        std::vector<std::pair<std::int64_t, std::filesystem::path>> found;
        for (const auto& entry : std::filesystem::directory_iterator(root_))
            if (entry.is_directory())
                if (auto s = detail::parse_step_name(entry.path().filename().string()))
                    found.push_back({*s, entry.path()});
        std::sort(found.begin(), found.end());
        std::vector<std::filesystem::path> out;
        for (auto& f : found) out.push_back(std::move(f.second));
        return out;
    }

    /// Deletes all but the newest `keep_last_n` checkpoints (>= 1), never the one `latest` or `best`
    /// names, oldest first (so a crash mid-prune leaves a consistent, smaller set).
    void prune(int keep_last_n) {
        if (keep_last_n < 1) throw config_error("keep_last_n", "must be >= 1, got " + std::to_string(keep_last_n));
        const auto all = list();
        const auto keep_latest = latest(), keep_best = best();
        const std::size_t n = all.size();
        for (std::size_t i = 0; i + static_cast<std::size_t>(keep_last_n) < n; ++i) {
            if ((keep_latest && all[i] == *keep_latest) || (keep_best && all[i] == *keep_best)) continue;
            std::error_code ec;
            std::filesystem::remove_all(all[i], ec);
            if (ec) throw io_error(all[i], "cannot remove old checkpoint: " + ec.message());
        }
    }

private:
    static void rename_or_throw(const std::filesystem::path& from, const std::filesystem::path& to) {
        if (::rename(from.c_str(), to.c_str()) != 0) {
            const int err = errno;
            throw io_error(to, distill::detail::io_errno_message("cannot rename " + from.string() + " to it", err));
        }
    }

    void set_pointer(const char* pointer_name, const std::string& target) {
        write_file_atomic(root_ / pointer_name, target + "\n");
    }

    std::optional<std::filesystem::path> pointer(const char* pointer_name) const {
        const auto path = root_ / pointer_name;
        if (!std::filesystem::exists(path)) return std::nullopt;
        const io::mapped_file map(path);
        // "step-NNNNNNNN\n"; anything much longer is not a pointer (and is not copied whole).
        if (map.bytes().size() > 4096)
            throw format_error(path, 1,
                               "does not name a checkpoint directory (" + std::to_string(map.bytes().size()) +
                                   " bytes, expected step-NNNNNNNN)");
        std::string text(reinterpret_cast<const char*>(map.bytes().data()), map.bytes().size());
        while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.pop_back();
        if (!detail::parse_step_name(text))
            throw format_error(path, 1,
                               "does not name a checkpoint directory (expected step-NNNNNNNN, got \"" + text + "\")");
        const auto dir = root_ / text;
        if (!std::filesystem::is_directory(dir))
            throw format_error(path, 1, "names " + text + ", which does not exist");
        return dir;
    }

    std::filesystem::path root_;
};

}  // namespace distill::io
