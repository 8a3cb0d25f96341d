//! `docker update` against a real berthd and the real kernel (cgroup v1): memory, swap, CPU
//! quota, cpuset, pids and shares written live into a running container's cgroup; a limit
//! under the usage refused with nothing changed (also what was already written is put
//! back); restart-policy changes that decide the next exit; a stopped container that takes
//! the values at its start; values that survive a daemon kill -9, a container restart and
//! a live upgrade; dockerd's refusals through the CLI; the `update` event.

mod common;
use common::{daemon_with_image, until, Daemon};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const MIB: u64 = 1 << 20;

fn inspect(d: &Daemon, fmt: &str, name: &str) -> String {
    d.ok(&["inspect", "-f", fmt, name])
}

/// A file of the container's cgroup in the v1 hierarchy of `ctrl`.
fn cg(d: &Daemon, id: &str, ctrl: &str, file: &str) -> String {
    let p = format!("/sys/fs/cgroup/{ctrl}{}/{id}/{file}", d.cgroup);
    std::fs::read_to_string(&p)
        .unwrap_or_else(|e| panic!("read {p}: {e}"))
        .trim()
        .to_string()
}

fn mem_files(d: &Daemon, id: &str) -> (String, String) {
    (
        cg(d, id, "memory", "memory.limit_in_bytes"),
        cg(d, id, "memory", "memory.memsw.limit_in_bytes"),
    )
}

fn bytes(n: u64) -> String {
    n.to_string()
}

fn now_arg() -> String {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970");
    format!("{}.{:09}", t.as_secs(), t.subsec_nanos())
}

fn pid_of(d: &Daemon, name: &str) -> i32 {
    inspect(d, "{{.State.Pid}}", name)
        .parse()
        .expect("numeric pid")
}

#[test]
fn limits_change_live_in_a_running_containers_cgroup() {
    let Some(d) = daemon_with_image() else { return };
    d.ok(&[
        "run", "-d", "--name", "up", "-m", "64m", "bb:test", "sleep", "1000",
    ]);
    let id = inspect(&d, "{{.Id}}", "up");
    let pid = pid_of(&d, "up");
    let t0 = now_arg();

    // Down within the stored memory+swap (twice the limit at create): the CLI prints the name.
    assert_eq!(d.ok(&["update", "-m", "100m", "up"]), "up");
    assert_eq!(mem_files(&d, &id).0, bytes(100 * MIB));
    assert_eq!(
        inspect(
            &d,
            "{{.HostConfig.Memory}} {{.HostConfig.MemorySwap}}",
            "up"
        ),
        format!("{} {}", 100 * MIB, 128 * MIB)
    );
    // Above it without a new swap limit: dockerd's conflict, nothing changes.
    let e = d.fails(&["update", "-m", "200m", "up"]);
    assert!(
        e.contains(&format!("Cannot update container {id}: Memory limit should be smaller than already set memoryswap limit, update the memoryswap at the same time")),
        "{e}"
    );
    assert_eq!(mem_files(&d, &id).0, bytes(100 * MIB));
    // Up and down with the swap limit.
    d.ok(&["update", "-m", "200m", "--memory-swap", "400m", "up"]);
    assert_eq!(mem_files(&d, &id), (bytes(200 * MIB), bytes(400 * MIB)));
    d.ok(&["update", "-m", "32m", "--memory-swap", "64m", "up"]);
    assert_eq!(mem_files(&d, &id), (bytes(32 * MIB), bytes(64 * MIB)));

    d.ok(&["update", "--cpus", "0.5", "up"]);
    assert_eq!(cg(&d, &id, "cpu", "cpu.cfs_quota_us"), "50000");
    assert_eq!(cg(&d, &id, "cpu", "cpu.cfs_period_us"), "100000");
    assert_eq!(inspect(&d, "{{.HostConfig.NanoCpus}}", "up"), "500000000");
    d.ok(&["update", "--cpuset-cpus", "1", "up"]);
    assert_eq!(cg(&d, &id, "cpuset", "cpuset.cpus"), "1");
    d.ok(&["update", "--cpuset-cpus", "0-1", "up"]);
    assert_eq!(cg(&d, &id, "cpuset", "cpuset.cpus"), "0-1");
    d.ok(&["update", "--pids-limit", "50", "up"]);
    assert_eq!(cg(&d, &id, "pids", "pids.max"), "50");
    d.ok(&["update", "--pids-limit", "-1", "up"]);
    assert_eq!(cg(&d, &id, "pids", "pids.max"), "max");
    assert_eq!(inspect(&d, "{{.HostConfig.PidsLimit}}", "up"), "0");
    d.ok(&["update", "--cpu-shares", "512", "up"]);
    assert_eq!(cg(&d, &id, "cpu", "cpu.shares"), "512");

    // Paused: written all the same.
    d.ok(&["pause", "up"]);
    d.ok(&["update", "--pids-limit", "60", "up"]);
    assert_eq!(cg(&d, &id, "pids", "pids.max"), "60");
    d.ok(&["unpause", "up"]);
    assert_eq!(
        pid_of(&d, "up"),
        pid,
        "the container ran on through the updates"
    );

    // One `update` event (with the name) per successful update, none for the refusal.
    let names = d.ok(&[
        "events",
        "--since",
        &t0,
        "--until",
        &now_arg(),
        "--filter",
        "event=update",
        "--format",
        "{{.Actor.ID}} {{.Actor.Attributes.name}}",
    ]);
    let lines: Vec<&str> = names.lines().collect();
    assert_eq!(lines.len(), 10, "{names}");
    assert!(lines.iter().all(|l| *l == format!("{id} up")), "{names}");
}

#[test]
fn a_memory_limit_under_the_usage_fails_and_changes_nothing() {
    let Some(d) = daemon_with_image() else { return };
    // 40 MiB in the container's tmpfs: charged to its memory cgroup, not reclaimable
    // without swap.
    d.ok(&[
        "run",
        "-d",
        "--name",
        "mem",
        "-m",
        "64m",
        "bb:test",
        "sh",
        "-c",
        "dd if=/dev/zero of=/dev/shm/f bs=1M count=40 2>/dev/null && echo filled && sleep 1000",
    ]);
    let id = inspect(&d, "{{.Id}}", "mem");
    until("the tmpfs to fill", || {
        d.ok(&["logs", "mem"]).contains("filled")
    });
    let before = mem_files(&d, &id);
    assert_eq!(before, (bytes(64 * MIB), bytes(128 * MIB)));

    let e = d.fails(&["update", "-m", "16m", "--memory-swap", "32m", "mem"]);
    assert!(
        e.contains(&format!(
            "Cannot update container {id}: unable to set memory limit to {} (current usage: ",
            16 * MIB
        )),
        "{e}"
    );
    assert_eq!(mem_files(&d, &id), before);
    // Raising memory+swap is written first, then the limit is refused: the swap limit
    // already written is put back.
    let e = d.fails(&["update", "-m", "16m", "--memory-swap", "300m", "mem"]);
    assert!(e.contains("unable to set memory limit"), "{e}");
    assert_eq!(mem_files(&d, &id), before);
    assert_eq!(
        inspect(&d, "{{.HostConfig.Memory}} {{.State.Status}}", "mem"),
        format!("{} running", 64 * MIB)
    );
    // A limit above the usage is fine.
    d.ok(&["update", "-m", "48m", "mem"]);
    assert_eq!(mem_files(&d, &id).0, bytes(48 * MIB));
}

#[test]
fn restart_policy_updates_decide_the_next_exit() {
    let Some(d) = daemon_with_image() else { return };
    d.ok(&["run", "-d", "--name", "rp", "bb:test", "sleep", "1000"]);
    assert_eq!(d.ok(&["update", "--restart", "always", "rp"]), "rp");
    assert_eq!(
        inspect(
            &d,
            "{{.HostConfig.RestartPolicy.Name}} {{.HostConfig.RestartPolicy.MaximumRetryCount}}",
            "rp"
        ),
        "always 0"
    );
    let pid1 = pid_of(&d, "rp");
    kill(Pid::from_raw(pid1), Signal::SIGKILL).expect("kill the container's init");
    until("the restart by the new policy", || {
        inspect(&d, "{{.State.Status}} {{.RestartCount}}", "rp") == "running 1"
            && pid_of(&d, "rp") != pid1
    });

    d.ok(&["update", "--restart", "no", "rp"]);
    let pid2 = pid_of(&d, "rp");
    kill(Pid::from_raw(pid2), Signal::SIGKILL).expect("kill the container's init");
    until("the exit", || {
        inspect(&d, "{{.State.Status}}", "rp") == "exited"
    });
    // The back-off of a second restart would be 200 ms: it must not come.
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(1) {
        assert_eq!(
            inspect(&d, "{{.State.Status}} {{.RestartCount}}", "rp"),
            "exited 1"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // During the back-off of a container that keeps failing (the 5th restart waits 1.6 s):
    // the pending restart follows the new policy.
    d.ok(&[
        "run",
        "-d",
        "--restart",
        "always",
        "--name",
        "fl",
        "bb:test",
        "sh",
        "-c",
        "exit 3",
    ]);
    until("a long back-off", || {
        let s = inspect(&d, "{{.State.Status}} {{.RestartCount}}", "fl");
        s.starts_with("restarting ") && s[11..].parse::<u32>().is_ok_and(|n| n >= 4)
    });
    d.ok(&["update", "--restart", "no", "fl"]);
    let count = inspect(&d, "{{.RestartCount}}", "fl");
    until("the pending restart to be dropped", || {
        inspect(&d, "{{.State.Status}}", "fl") == "exited"
    });
    assert_eq!(inspect(&d, "{{.RestartCount}}", "fl"), count);

    d.ok(&[
        "run", "-d", "--rm", "--name", "ar", "bb:test", "sleep", "1000",
    ]);
    let ar = inspect(&d, "{{.Id}}", "ar");
    let e = d.fails(&["update", "--restart", "always", "ar"]);
    assert!(
        e.contains(&format!("Cannot update container {ar}: Restart policy cannot be updated because AutoRemove is enabled for the container")),
        "{e}"
    );
    assert_eq!(
        inspect(&d, "{{.HostConfig.RestartPolicy.Name}}", "ar"),
        "no"
    );
}

#[test]
fn a_stopped_container_takes_the_values_at_start_and_bad_input_changes_nothing() {
    let Some(d) = daemon_with_image() else { return };
    d.ok(&["create", "--name", "st", "bb:test", "sleep", "1000"]);
    d.ok(&[
        "update",
        "-m",
        "50m",
        "--memory-swap",
        "100m",
        "--cpus",
        "1",
        "--pids-limit",
        "20",
        "--cpuset-cpus",
        "0",
        "st",
    ]);
    let fmt = "{{.HostConfig.Memory}} {{.HostConfig.MemorySwap}} {{.HostConfig.NanoCpus}} {{.HostConfig.PidsLimit}} {{.HostConfig.CpusetCpus}}";
    let want = format!("{} {} 1000000000 20 0", 50 * MIB, 100 * MIB);
    assert_eq!(inspect(&d, fmt, "st"), want);
    d.ok(&["start", "st"]);
    let id = inspect(&d, "{{.Id}}", "st");
    assert_eq!(mem_files(&d, &id), (bytes(50 * MIB), bytes(100 * MIB)));
    assert_eq!(cg(&d, &id, "cpu", "cpu.cfs_quota_us"), "100000");
    assert_eq!(cg(&d, &id, "pids", "pids.max"), "20");
    assert_eq!(cg(&d, &id, "cpuset", "cpuset.cpus"), "0");

    let e = d.fails(&["update", "--cpus", "1", "nope"]);
    assert!(e.contains("No such container: nope"), "{e}");
    let n = std::thread::available_parallelism().map_or(1, |n| n.get());
    let e = d.fails(&["update", "--cpus", "-1", "st"]);
    assert!(
        e.contains(&format!(
            "Range of CPUs is from 0.01 to {n}.00, as there are only {n} CPUs available"
        )),
        "{e}"
    );
    let e = d.fails(&["update", "--memory", "1k", "st"]);
    assert!(e.contains("Minimum memory limit allowed is 6MB"), "{e}");
    let e = d.fails(&["update", "--cpuset-cpus", "64", "st"]);
    assert!(
        e.contains("Requested CPUs are not available - requested 64, available: "),
        "{e}"
    );
    let e = d.fails(&["update", "--memory-swap", "20m", "st"]);
    assert!(
        e.contains("Minimum memoryswap limit should be larger than memory limit"),
        "{e}"
    );
    assert_eq!(inspect(&d, fmt, "st"), want);
    assert_eq!(mem_files(&d, &id), (bytes(50 * MIB), bytes(100 * MIB)));
}

#[test]
fn updated_values_survive_a_daemon_crash_a_restart_and_a_live_upgrade() {
    let Some(mut d) = daemon_with_image() else {
        return;
    };
    d.ok(&["run", "-d", "--name", "pp", "bb:test", "sleep", "1000"]);
    let id = inspect(&d, "{{.Id}}", "pp");
    d.ok(&[
        "update",
        "-m",
        "80m",
        "--memory-swap",
        "160m",
        "--cpus",
        "1.5",
        "--pids-limit",
        "30",
        "--restart",
        "on-failure:3",
        "pp",
    ]);
    let fmt = "{{.HostConfig.Memory}} {{.HostConfig.MemorySwap}} {{.HostConfig.NanoCpus}} {{.HostConfig.PidsLimit}} {{.HostConfig.RestartPolicy.Name}}:{{.HostConfig.RestartPolicy.MaximumRetryCount}}";
    let want = format!("{} {} 1500000000 30 on-failure:3", 80 * MIB, 160 * MIB);
    let check_files = |d: &Daemon| {
        assert_eq!(mem_files(d, &id), (bytes(80 * MIB), bytes(160 * MIB)));
        assert_eq!(cg(d, &id, "cpu", "cpu.cfs_quota_us"), "150000");
        assert_eq!(cg(d, &id, "pids", "pids.max"), "30");
    };
    check_files(&d);

    d.kill9();
    d.spawn();
    assert_eq!(inspect(&d, fmt, "pp"), want);
    check_files(&d);
    // A new run builds its cgroup from the stored values.
    let pid = pid_of(&d, "pp");
    d.ok(&["restart", "-t", "0", "pp"]);
    assert_ne!(pid_of(&d, "pp"), pid);
    check_files(&d);

    d.upgrade_ok(&[]);
    assert_eq!(inspect(&d, fmt, "pp"), want);
    check_files(&d);
    // The new generation updates too.
    d.ok(&["update", "--pids-limit", "40", "pp"]);
    assert_eq!(cg(&d, &id, "pids", "pids.max"), "40");
    d.kill9();
    d.spawn();
    assert_eq!(inspect(&d, "{{.HostConfig.PidsLimit}}", "pp"), "40");
}
