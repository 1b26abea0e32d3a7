/* What bindgen reads to produce src/rdma/ffi.rs (see src/rdma/regen.sh). */
#include <infiniband/verbs.h>
#include <rdma/rdma_cma.h>
