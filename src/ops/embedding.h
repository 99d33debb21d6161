#pragma once
#include <cstdint>

namespace dsmoe::ops {

// out[i] = table[ids[i]]; table [vocab, dim]. Ids are validated by the caller (data loader).
void embedding_forward(float* out, const int32_t* ids, const float* table, int64_t n, int64_t dim);
// dtable[ids[i]] += dout[i]  (deterministic: rows with the same id are summed in index order)
void embedding_backward(float* dtable, const float* dout, const int32_t* ids, int64_t n, int64_t dim);

}  // namespace dsmoe::ops
