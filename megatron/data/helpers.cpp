// Hot loops of the GPT data pipeline, exposed to Python with pybind11.
// Each function has a numpy twin in index_helpers.py; tests check they agree.
#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

namespace py = pybind11;

// Start (index into doc_idx, token offset) of each of the samples cut from the documents
// listed in doc_idx, laid end to end. Sample i spans seq_length + 1 tokens; consecutive
// samples share their boundary token. Returns int64 [num_samples + 1, 2].
py::array_t<int64_t> build_sample_idx(const py::array_t<int32_t, py::array::c_style>& sizes_,
                                      const py::array_t<int32_t, py::array::c_style>& doc_idx_,
                                      const int32_t seq_length, const int32_t num_epochs,
                                      const int64_t tokens_per_epoch) {
  if (seq_length < 1) throw std::invalid_argument("seq_length must be positive");
  if (num_epochs < 1) throw std::invalid_argument("num_epochs must be positive");
  if (tokens_per_epoch < 2) throw std::invalid_argument("tokens_per_epoch must exceed 1");
  const auto sizes = sizes_.unchecked<1>();
  const auto doc_idx = doc_idx_.unchecked<1>();
  const int64_t num_samples = (static_cast<int64_t>(num_epochs) * tokens_per_epoch - 1) / seq_length;
  py::array_t<int64_t> result({num_samples + 1, static_cast<int64_t>(2)});
  int64_t* out = result.mutable_data();
  const int64_t num_docs = doc_idx.shape(0);
  const int64_t num_sizes = sizes.shape(0);
  {
    py::gil_scoped_release release;
    int64_t doc_pos = 0;     // index into doc_idx
    int64_t doc_offset = 0;  // token offset inside that document
    out[0] = 0;
    out[1] = 0;
    for (int64_t sample = 1; sample <= num_samples; ++sample) {
      int64_t remaining = static_cast<int64_t>(seq_length) + 1;
      while (remaining != 0) {
        if (doc_pos >= num_docs) throw std::runtime_error("doc_idx exhausted before all samples were built");
        const int64_t doc_id = doc_idx[doc_pos];
        if (doc_id < 0 || doc_id >= num_sizes) throw std::runtime_error("doc_idx entry out of range of sizes");
        const int64_t available = static_cast<int64_t>(sizes[doc_id]) - doc_offset;
        remaining -= available;
        if (remaining <= 0) {
          // The sample ends inside this document; the last token is shared with the next one.
          doc_offset += remaining + available - 1;
          remaining = 0;
        } else {
          ++doc_pos;
          doc_offset = 0;
        }
      }
      out[2 * sample] = doc_pos;
      out[2 * sample + 1] = doc_offset;
    }
  }
  return result;
}

// Greedy weighted interleaving: each position goes to the dataset whose count lags its
// target share the most (ties to the lowest index). Fills dataset_index (uint8) and
// dataset_sample_index (int64, the running count of that dataset).
void build_blending_indices(py::array_t<uint8_t, py::array::c_style>& dataset_index_,
                            py::array_t<int64_t, py::array::c_style>& dataset_sample_index_,
                            const py::array_t<double, py::array::c_style>& weights_,
                            const int32_t num_datasets, const int64_t size, const bool verbose) {
  (void)verbose;
  if (num_datasets < 1 || num_datasets > 255) throw std::invalid_argument("num_datasets must be in [1, 255]");
  if (weights_.shape(0) != num_datasets) throw std::invalid_argument("weights length differs from num_datasets");
  if (dataset_index_.shape(0) < size || dataset_sample_index_.shape(0) < size)
    throw std::invalid_argument("output arrays shorter than size");
  auto dataset_index = dataset_index_.mutable_unchecked<1>();
  auto dataset_sample_index = dataset_sample_index_.mutable_unchecked<1>();
  const auto weights = weights_.unchecked<1>();
  std::vector<int64_t> counts(num_datasets, 0);
  py::gil_scoped_release release;
  for (int64_t i = 0; i < size; ++i) {
    const double position = std::max(static_cast<double>(i), 1.0);
    int32_t best = 0;
    double best_error = weights[0] * position - static_cast<double>(counts[0]);
    for (int32_t d = 1; d < num_datasets; ++d) {
      const double error = weights[d] * position - static_cast<double>(counts[d]);
      if (error > best_error) {
        best_error = error;
        best = d;
      }
    }
    dataset_index[i] = static_cast<uint8_t>(best);
    dataset_sample_index[i] = counts[best];
    ++counts[best];
  }
}

PYBIND11_MODULE(helpers_cpp, m) {
  m.doc() = "C++ index builders for the GPT data pipeline";
  m.def("build_sample_idx", &build_sample_idx, py::arg("sizes"), py::arg("doc_idx"),
        py::arg("seq_length"), py::arg("num_epochs"), py::arg("tokens_per_epoch"));
  m.def("build_blending_indices", &build_blending_indices, py::arg("dataset_index"),
        py::arg("dataset_sample_index"), py::arg("weights"), py::arg("num_datasets"),
        py::arg("size"), py::arg("verbose") = false);
}
