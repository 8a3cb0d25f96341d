//! Unit tests of `docker update`: parsing, dockerd's checks, the merge into the stored
//! HostConfig and the values written into a live cgroup.

use super::*;
use berth_api::models::RestartPolicyNameEnum;

fn host() -> HostLimits {
    HostLimits {
        ncpu: 2,
        cpus: "0-1".into(),
        mems: "0".into(),
        swap_limit: true,
        blkio_weight: false,
        cpu_realtime: true,
        kernel_memory: true,
    }
}

fn req(json: &str) -> UpdateRequest {
    UpdateRequest::parse(json.as_bytes(), Some("1.41")).expect("parse")
}

fn verified(json: &str) -> ApiResult<(UpdateRequest, Vec<String>)> {
    let mut r = req(json);
    let w = verify(&mut r, &host())?;
    Ok((r, w))
}

fn refusal(json: &str) -> (u16, String) {
    let e = verified(json).expect_err("refused");
    (e.status(), e.to_string())
}

#[test]
fn parses_the_cli_body_and_normalises_pids() {
    let cli = r#"{"CpuShares":0,"Memory":134217728,"NanoCpus":1000000000,"CgroupParent":"","BlkioWeight":0,"BlkioWeightDevice":null,"CpuPeriod":0,"CpuQuota":0,"CpusetCpus":"","MemorySwap":268435456,"MemorySwappiness":null,"OomKillDisable":null,"PidsLimit":-1,"RestartPolicy":{"Name":"no","MaximumRetryCount":0}}"#;
    let r = req(cli);
    assert_eq!(r.body.memory, Some(128 << 20));
    assert_eq!(
        r.body.pids_limit,
        Some(0),
        "-1 means unlimited, stored as 0"
    );
    assert_eq!(
        r.body.restart_policy.and_then(|p| p.name),
        Some(RestartPolicyNameEnum::NO)
    );
    // Before API 1.40 PidsLimit is ignored.
    let old = UpdateRequest::parse(br#"{"PidsLimit":5}"#, Some("1.39")).expect("parse");
    assert_eq!(old.body.pids_limit, None);
    let e = UpdateRequest::parse(br#"{"RestartPolicy":{"Name":"sometimes"}}"#, None)
        .expect_err("bad policy");
    assert_eq!(
        (e.status(), e.to_string()),
        (400, "invalid restart policy 'sometimes'".to_string())
    );
    assert_eq!(
        UpdateRequest::parse(b"{", None).expect_err("json").status(),
        400
    );
    assert_eq!(
        UpdateRequest::parse(b"  ", None).ok(),
        Some(UpdateRequest::default())
    );
    assert_eq!(req(r#"{"KernelMemory":1024}"#).kernel_memory, 1024);
}

#[test]
fn verify_refuses_bad_values_in_dockerd_words() {
    assert_eq!(
        refusal(r#"{"Memory":1024}"#),
        (400, "Minimum memory limit allowed is 6MB".into())
    );
    assert_eq!(
        refusal(r#"{"Memory":-1}"#).1,
        "Minimum memory limit allowed is 6MB"
    );
    assert_eq!(
        refusal(r#"{"NanoCpus":-1000000000}"#).1,
        "Range of CPUs is from 0.01 to 2.00, as there are only 2 CPUs available"
    );
    assert_eq!(
        refusal(r#"{"NanoCpus":3000000000}"#).1,
        "Range of CPUs is from 0.01 to 2.00, as there are only 2 CPUs available"
    );
    assert!(refusal(r#"{"NanoCpus":1000000000,"CpuPeriod":50000}"#)
        .1
        .contains("Nano CPUs and CPU Period cannot both be set"));
    assert!(refusal(r#"{"CpuPeriod":10}"#).1.contains("less than 1ms"));
    assert!(refusal(r#"{"CpuQuota":10}"#)
        .1
        .contains("quota can not be less"));
    assert_eq!(
        refusal(r#"{"Memory":67108864,"MemorySwap":33554432}"#).1,
        "Minimum memoryswap limit should be larger than memory limit, see usage"
    );
    assert_eq!(
        refusal(r#"{"MemoryReservation":1024}"#).1,
        "Minimum memory reservation allowed is 6MB"
    );
    assert!(
        refusal(r#"{"Memory":67108864,"MemoryReservation":134217728}"#)
            .1
            .contains("can not be less than memory reservation")
    );
    assert_eq!(
        refusal(r#"{"CpusetCpus":"5"}"#).1,
        "Requested CPUs are not available - requested 5, available: 0-1"
    );
    assert_eq!(
        refusal(r#"{"CpusetCpus":"0-x"}"#).1,
        "Invalid value 0-x for cpuset cpus: invalid format: 0-x"
    );
    assert_eq!(
        refusal(r#"{"CpusetMems":"1"}"#).1,
        "Requested memory nodes are not available - requested 1, available: 0"
    );
    assert_eq!(
        refusal(r#"{"KernelMemory":1024}"#).1,
        "Minimum kernel memory limit allowed is 4MB"
    );
    assert!(refusal(r#"{"IOMaximumIOps":5}"#)
        .1
        .contains("Invalid QoS settings"));
    assert_eq!(
        refusal(r#"{"RestartPolicy":{"Name":"always","MaximumRetryCount":3}}"#).1,
        "maximum retry count cannot be used with restart policy 'always'"
    );
    assert_eq!(
        refusal(r#"{"RestartPolicy":{"Name":"on-failure","MaximumRetryCount":-1}}"#).1,
        "maximum retry count cannot be negative"
    );
    assert_eq!(
        refusal(r#"{"CpuRealtimePeriod":1000,"CpuRealtimeRuntime":2000}"#).1,
        "cpu real-time runtime cannot be higher than cpu real-time period"
    );
    assert_eq!(
        refusal(r#"{"MemorySwappiness":101}"#).1,
        "Invalid value: 101, valid memory swappiness range is 0-100"
    );
}

#[test]
fn verify_drops_what_the_host_cannot_apply_with_warnings() {
    let (r, w) = verified(r#"{"BlkioWeight":300,"KernelMemory":67108864,"CpuPercent":5}"#)
        .expect("accepted");
    assert_eq!(r.body.blkio_weight, Some(0));
    assert_eq!(r.kernel_memory, 0);
    assert_eq!(r.body.cpu_percent, Some(0));
    assert!(w.iter().any(|x| x.contains("Block I/O weight")), "{w:?}");
    assert!(w
        .iter()
        .any(|x| x.contains("kernel memory limit is deprecated")));
    assert!(w.iter().any(|x| x.contains("CPU percent")));
    // No swap accounting: the swap limit is dropped, as dockerd does.
    let mut r = req(r#"{"Memory":67108864,"MemorySwap":134217728}"#);
    let h = HostLimits {
        swap_limit: false,
        ..host()
    };
    let w = verify(&mut r, &h).expect("accepted");
    assert_eq!(r.body.memory_swap, Some(-1));
    assert!(w[0].contains("Memory limited without swap"));
    // A clean request has no warnings.
    assert_eq!(
        verified(r#"{"Memory":67108864,"NanoCpus":500000000}"#)
            .expect("ok")
            .1,
        Vec::<String>::new()
    );
}

fn stored(json: &str) -> HostConfig {
    serde_json::from_str(json).expect("host config")
}

fn body(json: &str) -> ContainerUpdateBody {
    req(json).body
}

#[test]
fn merge_sets_only_what_is_given() {
    let hc = stored(
        r#"{"Memory":67108864,"CpuShares":256,"CpusetCpus":"0-1","PidsLimit":100,"RestartPolicy":{"Name":"no","MaximumRetryCount":0}}"#,
    );
    let m = merge(
        &hc,
        &body(r#"{"Memory":104857600,"CpusetCpus":"","CpuShares":0}"#),
        true,
    )
    .expect("merge");
    assert_eq!(m.memory, Some(100 << 20));
    assert_eq!(
        m.memory_swap,
        Some(128 << 20),
        "the stored swap is what dockerd stores at create: twice the limit"
    );
    assert_eq!(m.cpu_shares, Some(256));
    assert_eq!(m.cpuset_cpus.as_deref(), Some("0-1"));
    assert_eq!(m.pids_limit, Some(100));
    let m = merge(
        &hc,
        &body(r#"{"NanoCpus":1500000000,"PidsLimit":0,"RestartPolicy":{"Name":"on-failure","MaximumRetryCount":3}}"#),
        true,
    )
    .expect("merge");
    assert_eq!(m.nano_cpus, Some(1_500_000_000));
    assert_eq!(m.pids_limit, Some(0));
    let p = m.restart_policy.expect("policy");
    assert_eq!(
        (p.name, p.maximum_retry_count),
        (Some(RestartPolicyNameEnum::ON_FAILURE), Some(3))
    );
    // An empty policy name leaves the policy alone.
    let m = merge(&hc, &body(r#"{"RestartPolicy":{"Name":""}}"#), true).expect("merge");
    assert_eq!(m.restart_policy, hc.restart_policy);
    // Without swap accounting a lone memory limit was stored with unlimited swap.
    let m = merge(&hc, &body(r#"{"CpuShares":512}"#), false).expect("merge");
    assert_eq!(m.memory_swap, Some(-1));
}

#[test]
fn merge_refuses_conflicts_with_what_is_stored() {
    let hc = stored(r#"{"Memory":67108864}"#);
    // Above the stored memory+swap (128 MiB) without a new swap limit.
    let e = merge(&hc, &body(r#"{"Memory":209715200}"#), true).expect_err("conflict");
    assert_eq!(
        e,
        "Memory limit should be smaller than already set memoryswap limit, update the memoryswap at the same time"
    );
    assert!(merge(
        &hc,
        &body(r#"{"Memory":209715200,"MemorySwap":419430400}"#),
        true
    )
    .is_ok());
    // dockerd compares with the stored swap even when none is set.
    let e = merge(
        &HostConfig::default(),
        &body(r#"{"Memory":67108864}"#),
        true,
    )
    .expect_err("no stored swap");
    assert!(e.starts_with("Memory limit should be smaller"), "{e}");
    let nano = stored(r#"{"NanoCpus":1000000000}"#);
    assert_eq!(
        merge(&nano, &body(r#"{"CpuQuota":50000}"#), true).expect_err("conflict"),
        "Conflicting options: CPU Quota cannot be updated as NanoCPUs has already been set"
    );
    let period = stored(r#"{"CpuPeriod":50000}"#);
    assert_eq!(
        merge(&period, &body(r#"{"NanoCpus":1000000000}"#), true).expect_err("conflict"),
        "Conflicting options: Nano CPUs cannot be updated as CPU Period has already been set"
    );
    let rm = stored(r#"{"AutoRemove":true}"#);
    assert_eq!(
        merge(&rm, &body(r#"{"RestartPolicy":{"Name":"always"}}"#), true).expect_err("conflict"),
        "Restart policy cannot be updated because AutoRemove is enabled for the container"
    );
    assert!(merge(&rm, &body(r#"{"RestartPolicy":{"Name":"no"}}"#), true).is_ok());
}

#[test]
fn live_limits_follow_the_request_not_the_stored_config() {
    let l = live_limits(&body(
        r#"{"Memory":104857600,"MemorySwap":0,"NanoCpus":500000000,"CpusetCpus":"1","PidsLimit":-1,"BlkioWeight":0}"#,
    ));
    assert_eq!(
        l,
        Limits {
            memory: Some(100 << 20),
            cpu_period: Some(100_000),
            cpu_quota: Some(50_000),
            cpuset_cpus: Some("1".into()),
            pids_limit: Some(0),
            ..Default::default()
        }
    );
    let l = live_limits(&body(
        r#"{"CpuPeriod":50000,"CpuQuota":-1,"MemorySwap":-1,"CpuShares":512,"MemoryReservation":33554432}"#,
    ));
    assert_eq!(
        (l.cpu_period, l.cpu_quota, l.memory_swap, l.cpu_shares),
        (Some(50_000), Some(-1), Some(-1), Some(512))
    );
    assert_eq!(l.memory_reservation, Some(32 << 20));
    assert!(live_limits(&body(r#"{"RestartPolicy":{"Name":"always"}}"#)).is_empty());
}

#[test]
fn cpu_lists_parse_like_moby() {
    let s = |v: &[u32]| {
        v.iter()
            .copied()
            .collect::<std::collections::BTreeSet<u32>>()
    };
    assert_eq!(parse_cpu_list("0-2,5"), Some(s(&[0, 1, 2, 5])));
    assert_eq!(parse_cpu_list(""), Some(s(&[])));
    assert_eq!(parse_cpu_list("2-1"), None);
    assert_eq!(parse_cpu_list("a"), None);
    assert_eq!(parse_cpu_list("1,"), None);
}
