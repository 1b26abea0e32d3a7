//! oxtarget: the iSCSI target (not built yet: issue 3). The crate exists so that the workspace has the design card's layout; it has no code yet.
