// The fixed tokenizer of the encode / decode targets: a byte-level BPE learnt by dsmoe's own
// trainer from a few sentences written here, once per process, so no tokenizer file is needed.
#pragma once
#include "tokenizer/tokenizer.h"

namespace dsmoe::fuzz {

const tok::Tokenizer& small_tokenizer();

}  // namespace dsmoe::fuzz
