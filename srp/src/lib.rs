//! oxtarget's SRP target (SCSI RDMA Protocol, SRP r16a with SRP-2 immediate
//! data) for the Linux ib_srp initiator over RDMA/CM. [`rdma`] is a thin layer
//! over librdmacm and libibverbs.

pub mod rdma;
