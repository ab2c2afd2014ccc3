// The fragment table of a batch: each group's fragments cut at every boundary any of its
// workers uses, identical pieces merged into one source (table.build in Python is its reference).

#pragma once

#include <cstdint>
#include <algorithm>
#include <map>
#include <set>
#include <tuple>
#include <vector>

namespace hogwild_cpu {

// The fragment table of a batch (table.build, which the tests hold this to array by array):
// the same cut of each group's fragments at every boundary any of its workers uses, identical
// pieces merged into one source, the pieces every worker sees at one offset first. Sequences
// come as `seq` [S, 4] (group, worker, rows, first home position), their fragments as `frags`
// [F, 4] (block-table row, home start, home end, view offset; sequence s's are
// [frag_ptr[s], frag_ptr[s+1])), their rows' view positions flat; each group's shared history
// (SeqView.shared, ascending group ids) as `shared` [4, K] with `shared_ptr` [G+1]. The arrays
// are those of FragmentTable, in its order; src_offset is [sources, workers], row-major.
struct Table {
  std::vector<int64_t> qsl, seq_group, seq_worker, q_pos, q_view, group_ptr, group_shared, src_row, src_start,
      src_end, src_offset;
  int64_t workers = 1, max_rows = 0;
};

Table make_table(const std::vector<int64_t>& seq, const std::vector<int64_t>& frag_ptr,
                 const std::vector<int64_t>& frags, const std::vector<int64_t>& view_pos, const int64_t* sh,
                 int64_t shared_len, const std::vector<int64_t>& shared_ptr) {
  const int64_t seqs = static_cast<int64_t>(seq.size()) / 4;
  TORCH_CHECK(seq.size() % 4 == 0 && static_cast<int64_t>(frag_ptr.size()) == seqs + 1 && frags.size() % 4 == 0 &&
                  frag_ptr.back() * 4 == static_cast<int64_t>(frags.size()),
              "fragment_table: seq [S, 4], frag_ptr [S+1], frags [F, 4]");
  const int64_t *sq = seq.data(), *fp = frag_ptr.data(), *fr = frags.data(), *shp = shared_ptr.data();
  using Frag = std::array<int64_t, 4>;
  auto frag = [&](int64_t i) { return Frag{fr[4 * i], fr[4 * i + 1], fr[4 * i + 2], fr[4 * i + 3]}; };
  // Groups in ascending id; the sequences of each, in batch order.
  std::vector<int64_t> ids;
  for (int64_t s = 0; s < seqs; ++s) ids.push_back(sq[4 * s]);
  std::sort(ids.begin(), ids.end());
  ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
  const int64_t groups = static_cast<int64_t>(ids.size());
  TORCH_CHECK(static_cast<int64_t>(shared_ptr.size()) == groups + 1 && shp[groups] == shared_len,
              "fragment_table: one shared run per group (shared_ptr [G+1])");
  auto index_of = [&](int64_t id) { return std::lower_bound(ids.begin(), ids.end(), id) - ids.begin(); };
  Table t;
  int64_t rows = 0;
  std::vector<std::vector<int64_t>> members(groups);
  for (int64_t s = 0; s < seqs; ++s) {
    members[index_of(sq[4 * s])].push_back(s);
    t.workers = std::max(t.workers, sq[4 * s + 1] + 1);
    t.max_rows = std::max(t.max_rows, sq[4 * s + 2]);
    rows += sq[4 * s + 2];
  }
  TORCH_CHECK(static_cast<int64_t>(view_pos.size()) == rows, "one view position per query row");
  const int64_t workers = t.workers;
  t.group_ptr.push_back(0);
  auto add = [&](int64_t row, int64_t start, int64_t end, const std::vector<int64_t>& seen_at) {
    t.src_row.push_back(row), t.src_start.push_back(start), t.src_end.push_back(end);
    t.src_offset.insert(t.src_offset.end(), seen_at.begin(), seen_at.end());
  };
  for (int64_t g = 0; g < groups; ++g) {
    const auto& m = members[g];
    std::vector<int64_t> group_workers;
    for (int64_t s : m) group_workers.push_back(sq[4 * s + 1]);
    // Fragments every view holds (at the same offset): one source each, as they are.
    std::map<Frag, int64_t> count;
    for (int64_t s : m) {
      std::set<Frag> once;
      for (int64_t i = fp[s]; i < fp[s + 1]; ++i) once.insert(frag(i));
      for (const auto& f : once) ++count[f];
    }
    std::vector<Frag> everywhere;
    for (const auto& [f, n] : count)
      if (n == static_cast<int64_t>(m.size())) everywhere.push_back(f);
    std::stable_sort(everywhere.begin(), everywhere.end(), [](const Frag& a, const Frag& b) { return a[3] < b[3]; });
    const std::set<Frag> is_everywhere(everywhere.begin(), everywhere.end());
    std::vector<std::tuple<int64_t, int64_t, int64_t, std::vector<int64_t>>> sources;
    for (const auto& f : everywhere) {
      if (f[2] <= f[1]) continue;
      std::vector<int64_t> seen_at(workers, -1);
      for (int64_t w : group_workers) seen_at[w] = f[3];
      sources.emplace_back(f[0], f[1], f[2], seen_at);
    }
    // The others: cut at every boundary of the group's other fragments on the same row.
    std::map<int64_t, std::set<int64_t>> cut_sets;
    for (int64_t s : m)
      for (int64_t i = fp[s]; i < fp[s + 1]; ++i) {
        const Frag f = frag(i);
        if (!is_everywhere.count(f)) cut_sets[f[0]].insert(f[1]), cut_sets[f[0]].insert(f[2]);
      }
    std::map<std::array<int64_t, 4>, size_t> index;  // (row, a, b, occurrence) -> source
    for (int64_t s : m) {
      std::map<std::array<int64_t, 3>, int64_t> seen;
      for (int64_t i = fp[s]; i < fp[s + 1]; ++i) {
        const Frag f = frag(i);
        if (is_everywhere.count(f)) continue;
        const auto& cuts = cut_sets[f[0]];
        std::vector<int64_t> points(cuts.lower_bound(f[1]), cuts.upper_bound(f[2]));
        for (size_t k = 0; k + 1 < points.size(); ++k) {
          const int64_t a = points[k], b = points[k + 1];
          const int64_t occurrence = seen[{f[0], a, b}]++;
          const std::array<int64_t, 4> key{f[0], a, b, occurrence};
          auto it = index.find(key);
          if (it == index.end()) {
            it = index.emplace(key, sources.size()).first;
            sources.emplace_back(f[0], a, b, std::vector<int64_t>(workers, -1));
          }
          std::get<3>(sources[it->second])[sq[4 * s + 1]] = f[3] + (a - f[1]);
        }
      }
    }
    // Pieces every view holds at one offset are shared too: those first.
    std::vector<char> alike(sources.size());
    int64_t found = 0;
    for (size_t k = 0; k < sources.size(); ++k) {
      const auto& seen_at = std::get<3>(sources[k]);
      const int64_t first = seen_at[group_workers[0]];
      bool same = first >= 0;
      for (int64_t w : group_workers) same = same && seen_at[w] == first;
      alike[k] = same, found += same;
    }
    for (size_t k = 0; k < sources.size(); ++k)
      if (alike[k]) add(std::get<0>(sources[k]), std::get<1>(sources[k]), std::get<2>(sources[k]), std::get<3>(sources[k]));
    for (int64_t k = shp[g]; k < shp[g + 1]; ++k) {  // the shared history, seen by every member at its offset
      std::vector<int64_t> seen_at(workers, -1);
      for (int64_t w : group_workers) seen_at[w] = sh[3 * shared_len + k];
      add(sh[k], sh[shared_len + k], sh[2 * shared_len + k], seen_at);
    }
    for (size_t k = 0; k < sources.size(); ++k)
      if (!alike[k]) add(std::get<0>(sources[k]), std::get<1>(sources[k]), std::get<2>(sources[k]), std::get<3>(sources[k]));
    t.group_shared.push_back(found + shp[g + 1] - shp[g]);
    t.group_ptr.push_back(static_cast<int64_t>(t.src_row.size()));
  }
  t.qsl.push_back(0);
  t.q_view = view_pos;
  for (int64_t s = 0; s < seqs; ++s) {
    t.qsl.push_back(t.qsl.back() + sq[4 * s + 2]);
    t.seq_group.push_back(index_of(sq[4 * s]));
    t.seq_worker.push_back(sq[4 * s + 1]);
    for (int64_t r = 0; r < sq[4 * s + 2]; ++r) t.q_pos.push_back(sq[4 * s + 3] + r);
  }
  return t;
}

}  // namespace hogwild_cpu
