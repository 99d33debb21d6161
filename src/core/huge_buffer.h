// Zero-filled byte storage backed by transparent huge pages where the kernel offers them.
//
// Why: weights streamed once per token (inference GEMVs) are read from DRAM, and with 4 KiB pages
// the hardware prefetchers stop at every page boundary and each page costs a TLB miss. Debian's
// default transparent_hugepage mode is "madvise", so memory from malloc/std::vector never gets
// 2 MiB pages; this buffer asks for them (mmap aligned to 2 MiB + MADV_HUGEPAGE). Without THP (or
// on other systems) it is plain anonymous memory, still zero-filled and 64-byte aligned.
#pragma once
#include <sys/mman.h>

#include <cstddef>
#include <cstdint>
#include <new>
#include <utility>

namespace dsmoe {

class HugeBuffer {
 public:
  HugeBuffer() = default;
  explicit HugeBuffer(size_t bytes) : size_(bytes) {
    if (bytes == 0) return;
    constexpr size_t kHuge = size_t(2) << 20;
    // Small buffers (below one huge page) gain nothing: plain pages, no alignment slack.
    const size_t align = bytes >= kHuge ? kHuge : 4096;
    map_len_ = (bytes + align - 1) / align * align + (align > 4096 ? align : 0);
    void* p = mmap(nullptr, map_len_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw std::bad_alloc();
    map_ = (uint8_t*)p;
    data_ = (uint8_t*)(((uintptr_t)map_ + align - 1) / align * align);
#ifdef MADV_HUGEPAGE
    if (align == kHuge) madvise(data_, (bytes + kHuge - 1) / kHuge * kHuge, MADV_HUGEPAGE);
#endif
  }
  ~HugeBuffer() {
    if (map_) munmap(map_, map_len_);
  }
  HugeBuffer(HugeBuffer&& o) noexcept { swap(o); }
  HugeBuffer& operator=(HugeBuffer&& o) noexcept {
    HugeBuffer t(std::move(o));
    swap(t);
    return *this;
  }
  HugeBuffer(const HugeBuffer&) = delete;
  HugeBuffer& operator=(const HugeBuffer&) = delete;

  uint8_t* data() { return data_; }
  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }

 private:
  void swap(HugeBuffer& o) noexcept {
    std::swap(map_, o.map_);
    std::swap(map_len_, o.map_len_);
    std::swap(data_, o.data_);
    std::swap(size_, o.size_);
  }
  uint8_t* map_ = nullptr;
  size_t map_len_ = 0;
  uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace dsmoe
