//! The json-file log: appending lines with `max-size`/`max-file` rotation by rename (never
//! truncation, so readers holding an old file keep a consistent view), and reading the
//! history back, rotated files oldest first.

use berth_api::logfmt::{self, Decoded, LogFilter};
use berth_api::shim::LogConfig;
use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Write};
use std::path::{Path, PathBuf};

/// The writer of one container's json-file log.
pub struct JsonLog {
    cfg: LogConfig,
    file: File,
    size: u64,
}

fn open_append(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
}

/// The name of the `n`th rotated file (`path.n`).
pub fn rotated_name(path: &Path, n: u32) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

impl JsonLog {
    /// Opens (or creates) the current log file for appending.
    pub fn open(cfg: LogConfig) -> io::Result<Self> {
        if let Some(dir) = cfg.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = open_append(&cfg.path)?;
        let size = file.metadata()?.len();
        Ok(Self { cfg, file, size })
    }

    /// Appends one encoded line, rotating first when it would push the file past `max_size`.
    pub fn append(&mut self, line: &[u8]) -> io::Result<()> {
        if let Some(max) = self.cfg.max_size {
            if self.size > 0 && self.size + line.len() as u64 > max {
                self.rotate()?;
            }
        }
        self.file.write_all(line)?;
        self.size += line.len() as u64;
        Ok(())
    }

    /// Shifts `path.(n-2)` → `path.(n-1)`, …, `path` → `path.1` and starts a new file.
    fn rotate(&mut self) -> io::Result<()> {
        let path = self.cfg.path.clone();
        let keep = self.cfg.max_file.max(1);
        if keep == 1 {
            std::fs::remove_file(&path).or_else(ignore_missing)?;
        } else {
            for i in (1..keep - 1).rev() {
                std::fs::rename(rotated_name(&path, i), rotated_name(&path, i + 1))
                    .or_else(ignore_missing)?;
            }
            std::fs::rename(&path, rotated_name(&path, 1)).or_else(ignore_missing)?;
        }
        self.file = open_append(&path)?;
        self.size = 0;
        Ok(())
    }
}

fn ignore_missing(e: io::Error) -> io::Result<()> {
    if e.kind() == io::ErrorKind::NotFound {
        Ok(())
    } else {
        Err(e)
    }
}

/// Reads every entry of the log (rotated files oldest first) that passes `filter`, tail last.
pub fn read_history(cfg: Option<&LogConfig>, filter: &LogFilter) -> Vec<Decoded> {
    let Some(cfg) = cfg else {
        return Vec::new();
    };
    let mut all = Vec::new();
    for name in logfmt::rotated_names(&cfg.path, cfg.max_file) {
        let Ok(f) = File::open(&name) else { continue };
        all.extend(
            logfmt::read_entries(BufReader::new(f))
                .into_iter()
                .filter(|d| filter.accepts(d)),
        );
    }
    filter.apply(all)
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_api::logfmt::{encode_entry, Stream};

    fn cfg(dir: &Path, max_size: Option<u64>, max_file: u32) -> LogConfig {
        LogConfig {
            path: dir.join("c-json.log"),
            max_size,
            max_file,
        }
    }

    #[test]
    fn rotation_renames_and_keeps_max_file() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let c = cfg(dir.path(), Some(150), 3);
        let mut log = JsonLog::open(c.clone())?;
        for i in 0..12 {
            log.append(&encode_entry(
                Stream::Stdout,
                format!("line{i}\n").as_bytes(),
                i,
            ))?;
        }
        assert!(c.path.exists());
        assert!(rotated_name(&c.path, 1).exists());
        assert!(rotated_name(&c.path, 2).exists());
        assert!(!rotated_name(&c.path, 3).exists());
        for p in logfmt::rotated_names(&c.path, 3) {
            assert!(std::fs::metadata(&p)?.len() <= 150, "{}", p.display());
        }
        let all = read_history(
            Some(&c),
            &LogFilter {
                stdout: true,
                stderr: true,
                ..Default::default()
            },
        );
        // Oldest files were dropped; what is left is in order and ends with the last line.
        let texts: Vec<_> = all.iter().map(|d| d.entry.log.clone()).collect();
        assert_eq!(texts.last().map(String::as_str), Some("line11\n"));
        let nums: Vec<i64> = all.iter().map(|d| d.time_ns).collect();
        assert!(nums.windows(2).all(|w| w[0] < w[1]), "{nums:?}");
        assert!(all.len() < 12);
        Ok(())
    }

    #[test]
    fn max_file_one_starts_a_new_file() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let c = cfg(dir.path(), Some(100), 1);
        let mut log = JsonLog::open(c.clone())?;
        for i in 0..5 {
            log.append(&encode_entry(Stream::Stderr, b"0123456789\n", i))?;
        }
        assert!(!rotated_name(&c.path, 1).exists());
        assert!(std::fs::metadata(&c.path)?.len() <= 100);
        Ok(())
    }

    #[test]
    fn reopen_appends() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let c = cfg(dir.path(), None, 1);
        JsonLog::open(c.clone())?.append(&encode_entry(Stream::Stdout, b"a\n", 1))?;
        JsonLog::open(c.clone())?.append(&encode_entry(Stream::Stdout, b"b\n", 2))?;
        let f = LogFilter {
            stdout: true,
            tail: Some(1),
            ..Default::default()
        };
        let h = read_history(Some(&c), &f);
        assert_eq!(h.len(), 1);
        assert_eq!(h[0].entry.log, "b\n");
        Ok(())
    }
}
