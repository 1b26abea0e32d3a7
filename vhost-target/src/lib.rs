//! oxtarget: vhost-user-scsi and vhost-user-blk devices (not built yet: issue 5 and 6). The crate exists so that the workspace has the design card's layout; it has no code yet.
