// One runtime parameter assembled whole from an HF checkpoint, through its
// ParameterPlan (conversion_rules.h): no model, no shards, no MPI. For tools
// (shard-inspect's checkpoint-against-HF diff) and tests; the collective,
// shard-by-shard import is hf_import.h.
//
// Memory: the whole parameter plus one source tensor (read whole and
// converted) at a time. Fine for a debugger looking at one parameter; a
// loader would read by ranges as hf_import.h does.
#pragma once

#include <ATen/core/Tensor.h>

#include "fsdp/checkpoint/conversion_rules.h"
#include "fsdp/element_type.h"

namespace fsdp::checkpoint {

// `slot`'s values in `plan` (as plan_import made it for the layout holding
// `slot`), in the parameter's shape and of type `type`, on the CPU. Each
// piece's source tensor is read whole, converted with convert_elements
// (rounding as torch's copy does), transposed back into block order when
// stored transposed, and its runs copied to their destinations.
// REQUIRES: plan.parameter == slot.name and the plan has its sources
// (throws std::invalid_argument otherwise). Throws CheckpointError naming the
// file and the key when a source cannot be read or converted, and when the
// pieces do not cover the parameter exactly once.
at::Tensor read_hf_parameter(const ParameterPlan& plan, const ParameterSlot& slot,
                             ElementType type);

}  // namespace fsdp::checkpoint
