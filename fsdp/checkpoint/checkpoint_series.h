// A run's checkpoints kept side by side (--keep-checkpoints): one directory
// per saved step under the run's checkpoint directory, and a pointer to the
// latest complete one.
//
//   RUN/step-00000080/      a checkpoint (distributed_checkpoint.h), complete
//   RUN/step-00000090/      before the pointer may name it
//   RUN/step-00000100/
//   RUN/latest              "step-00000100\n", replaced atomically (rename)
//
// A save writes RUN/step-N atomically, then points `latest` at it, then
// prunes: a crash at any moment leaves `latest` naming a complete checkpoint.
// Readers given RUN read the checkpoint `latest` names (resolve_checkpoint).
// Only names of this form are ever pruned; nothing else in RUN is touched.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace fsdp::checkpoint {

inline constexpr const char* kLatestFileName = "latest";

// "step-00000100": at least 8 digits, so that names sort by step.
std::string step_directory_name(std::int64_t step);
// The step of such a name, or -1 when `name` is not one.
std::int64_t step_of_directory_name(const std::string& name);

// Whether `directory` holds a series (its `latest` pointer exists).
bool is_checkpoint_series(const std::filesystem::path& directory);

// RUN/<the name in RUN/latest>. Throws CheckpointError naming RUN/latest when
// it is not a regular file, does not hold a step directory name, or names one
// that does not exist (the pointer is untrusted input like any index).
std::filesystem::path latest_checkpoint(const std::filesystem::path& series);

// The series' latest checkpoint when `directory` is a series, else `directory`.
std::filesystem::path resolve_checkpoint(const std::filesystem::path& directory);

// The steps of the step directories in `series`, ascending.
std::vector<std::int64_t> series_steps(const std::filesystem::path& series);

// Points RUN/latest at RUN/step-`step` (write a temporary, fsync, rename,
// fsync the directory). REQUIRES: that checkpoint is complete.
void publish_latest(const std::filesystem::path& series, std::int64_t step);

// Which steps a series keeps: the last `keep_last` (0: all), every step that
// is a multiple of `keep_every` (0: none), and always `latest`.
std::vector<std::int64_t> steps_to_prune(const std::vector<std::int64_t>& steps,
                                         std::int64_t latest, std::int64_t keep_last,
                                         std::int64_t keep_every);

// Removes RUN/step-N for each of `steps` (and their .previous/.partial
// leftovers), after checking that each holds only a checkpoint's files
// (check_save_directory); throws CheckpointError naming the first that does not.
void prune_series(const std::filesystem::path& series, const std::vector<std::int64_t>& steps);

// Removes the RUN/step-N.partial directories that interrupted saves left.
// REQUIRES: no save into `series` is in progress.
void remove_interrupted_saves(const std::filesystem::path& series);

// Throws CheckpointError unless `series` can hold a series: absent, empty, or
// holding only `latest`, step directories (each itself a checkpoint) and the
// leftovers of interrupted saves (step-N.partial, step-N.previous). For
// preflight, like check_save_directory.
void check_series_directory(const std::filesystem::path& series);

}  // namespace fsdp::checkpoint
