// Corpora of documents labelled with their domain, for `dsmoe prepare --corpus mixed` and
// `--manifest`: reading them, removing duplicate and near-duplicate documents, and choosing the
// held-out documents by a hash of their text (not their position), so that adding or reordering
// sources never moves a document between the splits.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace dsmoe {

struct Document {
  std::string text;
  int32_t domain = -1;  // index into LabelledCorpus::domains
  std::string source;   // the file it came from (messages)
};

struct LabelledCorpus {
  std::vector<std::string> domains;  // in order of first appearance
  std::vector<Document> docs;

  // The index of `name`, added if new (validated: 1..kMaxDomainNameBytes bytes, no control
  // characters, at most kMaxDomains names; the error names `where`).
  int32_t domain_index(const std::string& name, const std::string& where);
};

// A manifest: one document per line, "domain<TAB>path" (a path relative to the manifest's folder
// is taken from there); blank lines and lines starting with '#' are skipped. Errors name the line:
// no tab, an empty domain or path, a file that cannot be read or is not valid UTF-8 (the tokenizer
// reads text).
LabelledCorpus read_manifest(const std::string& manifest_path);

// The mixed corpus: the Brown corpus (detagged) as domain "prose", then the manifest written by
// scripts/mixed_corpus.py (scripture, dictionary, code, documentation).
LabelledCorpus read_mixed_corpus(const std::string& brown_dir, const std::string& manifest_path);

struct DedupOptions {
  int shingle_words = 5;           // near-duplicates: Jaccard similarity of the sets of 5-word shingles
  double near_threshold = 0.8;     // ... estimated from MinHash signatures; >= this is a near-duplicate
  int bands = 16, rows = 8;        // LSH: 16 bands of 8 of the 128 MinHash values propose candidates
  size_t max_bucket_checks = 64;   // candidates compared per band bucket (bounds the work on boilerplate)
};
struct DedupReport {
  size_t exact = 0;  // documents equal to an earlier one after collapsing whitespace
  size_t near = 0;   // documents whose estimated shingle Jaccard with an earlier kept one >= threshold
  std::vector<size_t> exact_by_domain, near_by_domain;
};
// Removes, in document order, every document that duplicates an earlier kept one (exactly, or
// nearly: see DedupOptions), across domains; the first copy is kept. Deterministic.
DedupReport deduplicate(LabelledCorpus& c, const DedupOptions& o = {});

// Whether a document is held out: XXH3-64 of its text modulo `every` is 0 (about 1 in `every`).
bool held_out_by_hash(const std::string& text, int64_t every);
// held_out_by_hash for every document, then, in each domain with at least 2 documents and none held
// out, the document with the smallest hash is held out, so that every domain can be evaluated.
std::vector<bool> choose_held_out(const LabelledCorpus& c, int64_t every);

}  // namespace dsmoe
