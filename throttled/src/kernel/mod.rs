//! Thin, typed access to the kernel: BPF programs and maps, cgroup v2,
//! procfs, the proc connector and sockets of other processes.
pub mod bpf;
pub mod cgroup;
pub mod netlink;
pub mod procfs;
pub mod procmon;
pub mod sockets;
