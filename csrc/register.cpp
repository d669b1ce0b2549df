// Operator schemas of ct_kernels (registered once) and the minimal Python module init so that
// `from ct_kernels import _C` loads this library (which runs the static registrations).
#include <Python.h>
#include <torch/library.h>

TORCH_LIBRARY(ct_kernels, m) {
  m.def("patch_labels(Tensor mask, int ph, int pw, int num_classes, int ignore_index) "
        "-> (Tensor labels, Tensor purity, Tensor bad)");
  // saved = (npos, stats, thr_val, thr_col): O(M) tensors; anchors are the rows row_start ..
  // row_start + row_count (-1: to the end), see csrc/common.h.
  m.def("supcon_forward(Tensor u, Tensor labels, int ignore_index, float inv_temp, str variant, "
        "int kp, int kn, bool allow_tf32, int row_start=0, int row_count=-1) "
        "-> (Tensor loss_rows, Tensor npos, Tensor stats, Tensor thr_val, Tensor thr_col)");
  m.def("supcon_backward(Tensor u, Tensor labels, int ignore_index, float inv_temp, str variant, "
        "int kp, int kn, bool allow_tf32, Tensor npos, Tensor stats, Tensor thr_val, "
        "Tensor thr_col, Tensor grad_rows, int row_start=0, int row_count=-1) -> Tensor");
}

static PyModuleDef ct_kernels_c_module = {PyModuleDef_HEAD_INIT, "_C",
                                          "ct_kernels compiled ops (torch.ops.ct_kernels.*)",
                                          -1, nullptr};

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&ct_kernels_c_module); }
