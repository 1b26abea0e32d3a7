//! SCSI target core (being written).
