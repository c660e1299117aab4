//! The election: the snapshots both flows meet at ([`view`]), which processes
//! belong to which candidate and how much CPU they got ([`membership`]).

pub mod membership;
pub mod view;
