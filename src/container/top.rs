//! `docker top` (host `ps` filtered to the container's cgroup, as dockerd does) and
//! `docker resize` of the container's tty.

use super::Containers;
use crate::error::{ApiError, ApiResult};
use berth_api::shim::ShimRequest;
use std::collections::HashSet;

/// Pids in the container's cgroup (v1: the pids or memory hierarchy; v2: the unified one).
pub fn cgroup_pids(cgroup_path: &str) -> HashSet<i32> {
    let rel = cgroup_path.trim_start_matches('/');
    let candidates = [
        format!("/sys/fs/cgroup/pids/{rel}/cgroup.procs"),
        format!("/sys/fs/cgroup/memory/{rel}/cgroup.procs"),
        format!("/sys/fs/cgroup/{rel}/cgroup.procs"),
    ];
    for c in candidates {
        if let Ok(text) = std::fs::read_to_string(&c) {
            return text.lines().filter_map(|l| l.trim().parse().ok()).collect();
        }
    }
    HashSet::new()
}

/// Keeps the header and the rows of `ps` output whose PID column is in `pids`.
pub fn filter_ps(output: &str, pids: &HashSet<i32>) -> ApiResult<(Vec<String>, Vec<Vec<String>>)> {
    let mut lines = output.lines();
    let header = lines
        .next()
        .ok_or_else(|| ApiError::Internal("ps printed nothing".into()))?;
    let titles: Vec<String> = header.split_whitespace().map(str::to_string).collect();
    let pid_col = titles
        .iter()
        .position(|t| t == "PID")
        .ok_or_else(|| ApiError::Internal("Couldn't find PID field in ps output".into()))?;
    let mut rows = Vec::new();
    for line in lines {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let Some(pid) = fields.get(pid_col).and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        if !pids.contains(&pid) {
            continue;
        }
        // The last column (command) may contain spaces.
        let n = titles.len();
        let mut row: Vec<String> = fields
            .iter()
            .take(n.saturating_sub(1))
            .map(|s| s.to_string())
            .collect();
        row.push(
            fields
                .iter()
                .skip(n.saturating_sub(1))
                .copied()
                .collect::<Vec<_>>()
                .join(" "),
        );
        rows.push(row);
    }
    Ok((titles, rows))
}

impl Containers {
    /// `GET /containers/{id}/top?ps_args=`.
    pub async fn top(&self, name: &str, ps_args: Option<&str>) -> ApiResult<serde_json::Value> {
        let rec = self.lookup(name)?;
        if !rec.state.status.is_live() {
            return Err(ApiError::Conflict(format!(
                "Container {} is not running",
                rec.id
            )));
        }
        let args: Vec<String> = ps_args
            .filter(|a| !a.is_empty())
            .unwrap_or("-ef")
            .split_whitespace()
            .map(str::to_string)
            .collect();
        let out = tokio::process::Command::new("ps")
            .args(&args)
            .output()
            .await
            .map_err(|e| ApiError::internal("run ps", e))?;
        if !out.status.success() {
            return Err(ApiError::Internal(format!(
                "ps: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let pids = cgroup_pids(&self.paths.cgroup_path(&rec.id));
        let (titles, rows) = filter_ps(&String::from_utf8_lossy(&out.stdout), &pids)?;
        self.event(&rec, "top", &[]);
        Ok(serde_json::json!({"Titles": titles, "Processes": rows}))
    }

    /// `POST /containers/{id}/resize?h=&w=`.
    pub async fn resize(&self, name: &str, h: u16, w: u16) -> ApiResult<()> {
        let rec = self.lookup(name)?;
        if !rec.state.status.is_live() {
            return Err(ApiError::Conflict(format!(
                "Container {} is not running",
                rec.id
            )));
        }
        if !rec.tty() {
            return Ok(());
        }
        self.shim(&rec.id)
            .call(
                ShimRequest::Resize {
                    exec_id: None,
                    height: h,
                    width: w,
                },
                None,
            )
            .await?;
        self.event(
            &rec,
            "resize",
            &[("height", h.to_string()), ("width", w.to_string())],
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ps_rows_are_filtered_by_pid_and_keep_the_command_whole() -> ApiResult<()> {
        let out = "UID PID PPID C STIME TTY TIME CMD\nroot 10 1 0 10:00 ? 00:00:00 sleep 100\nroot 11 1 0 10:00 ? 00:00:00 other\n";
        let (t, rows) = filter_ps(out, &HashSet::from([10]))?;
        assert_eq!(t.len(), 8);
        assert_eq!(
            rows,
            vec![vec![
                "root",
                "10",
                "1",
                "0",
                "10:00",
                "?",
                "00:00:00",
                "sleep 100"
            ]]
        );
        assert!(filter_ps("A B\n", &HashSet::new()).is_err());
        Ok(())
    }
}
