//! Storage for replikativ peers (work in progress: the store trait and its backends land with the
//! store issue).
