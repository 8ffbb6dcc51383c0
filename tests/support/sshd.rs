//! The SFTP servers of the SFTP tests: OpenSSH's `sshd`, or ProFTPD's
//! `mod_sftp` ([`TestSshd::start_proftpd`]; its authorized key in RFC 4716
//! form, `ssh-keygen -e`). One server per test, as root, on a free
//! loopback port, with its own config, host key and authorized key (all
//! generated with `ssh-keygen`), key authentication only; for `sshd`,
//! `Subsystem sftp internal-sftp` (or `sftp-server` behind a relay that
//! holds one request, `sftp_hold.py`). The folder files go to may be a small
//! tmpfs (a full disk) or made read-only with a read-only remount.

#![allow(dead_code)] // each test binary uses its own part

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::env::env_line;

/// The folder under the destination that holds temporaries.
pub const TEMP_DIR: &str = ".esr-exporter-tmp";

/// A running `sshd` and the files a client needs to reach it.
pub struct TestSshd {
    pub dir: tempfile::TempDir,
    pub port: u16,
    /// The folder files are published to.
    pub inbox: PathBuf,
    /// The client's private key (0600).
    pub key: PathBuf,
    /// `known_hosts` listing the server's host key.
    pub known_hosts: PathBuf,
    child: Option<Child>,
    mounted: bool,
    /// The SFTP subsystem's command when not `internal-sftp` (the relay
    /// that holds one request, `sftp_hold.py`, or one that is no SFTP
    /// server at all).
    subsystem: Option<String>,
    /// Host keys served besides `host_key`.
    more_host_keys: Vec<PathBuf>,
    /// Which server.
    server: Server,
}

/// Which SFTP server a [`TestSshd`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Server {
    /// OpenSSH's `sshd` (Debian `openssh-server`).
    OpenSsh,
    /// ProFTPD's `mod_sftp` (Debian `proftpd-core`, `proftpd-mod-crypto`).
    Proftpd,
}

fn keygen(path: &Path) {
    keygen_of("ed25519", path);
}

fn keygen_of(kind: &str, path: &Path) {
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", kind, "-N", "", "-C", "esr-test", "-f"])
        .arg(path)
        .status()
        .expect("ssh-keygen (Debian openssh-client)");
    assert!(status.success(), "ssh-keygen {}", path.display());
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

impl TestSshd {
    /// Starts a server whose inbox is a plain folder.
    pub async fn start() -> Self {
        Self::start_with(None).await
    }

    /// Starts a server whose inbox is a tmpfs of `bytes` (a disk that fills).
    pub async fn start_on_tmpfs(bytes: u64) -> Self {
        Self::start_with(Some(bytes)).await
    }

    /// Starts a server whose SFTP subsystem (OpenSSH's `sftp-server`
    /// behind `sftp_hold.py`) holds one request for good: `mode` is
    /// `rename-to` (a rename to a path ending with `needle`) or
    /// `write-after-open` (the first write after opening a path containing
    /// `needle`). [`TestSshd::held`] says when it holds.
    pub async fn start_holding(mode: &str, needle: &str) -> Self {
        let relay = format!(
            "/usr/bin/python3 {}/tests/support/sftp_hold.py {mode} {needle}",
            env!("CARGO_MANIFEST_DIR")
        );
        Self::start_with_subsystem(relay, true).await
    }

    /// Starts a server whose SFTP subsystem is `command` (its marker file
    /// appended as the last argument when `marked`).
    pub async fn start_with_subsystem(command: String, marked: bool) -> Self {
        let mut sshd = Self::start_with(None).await;
        let marker = sshd.dir.path().join("held");
        sshd.subsystem = Some(match marked {
            true => format!("{command} {}", marker.display()),
            false => command,
        });
        sshd.write_config();
        sshd.kill();
        sshd.restart().await;
        sshd
    }

    /// True once the subsystem holds its request.
    pub fn held(&self) -> bool {
        self.dir.path().join("held").exists()
    }

    /// Starts ProFTPD's `mod_sftp` instead of `sshd`, its inbox a plain
    /// folder.
    pub async fn start_proftpd() -> Self {
        Self::start_on(None, Server::Proftpd).await
    }

    /// Starts `server`, its inbox a plain folder.
    pub async fn start_server(server: Server) -> Self {
        Self::start_on(None, server).await
    }

    async fn start_with(tmpfs: Option<u64>) -> Self {
        Self::start_on(tmpfs, Server::OpenSsh).await
    }

    async fn start_on(tmpfs: Option<u64>, server: Server) -> Self {
        let dir = tempfile::tempdir().expect("sshd dir");
        let inbox = dir.path().join("inbox");
        std::fs::create_dir(&inbox).unwrap();
        if let Some(bytes) = tmpfs {
            mount(
                &["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"],
                &inbox,
            );
        }
        keygen(&dir.path().join("host_key"));
        keygen(&dir.path().join("id_ed25519"));
        std::fs::copy(
            dir.path().join("id_ed25519.pub"),
            dir.path().join("authorized_keys"),
        )
        .unwrap();
        let port = free_port();
        let host_key = std::fs::read_to_string(dir.path().join("host_key.pub")).unwrap();
        let known_hosts = dir.path().join("known_hosts");
        std::fs::write(&known_hosts, format!("[127.0.0.1]:{port} {host_key}")).unwrap();
        let mut sshd = Self {
            key: dir.path().join("id_ed25519"),
            dir,
            port,
            inbox,
            known_hosts,
            child: None,
            mounted: tmpfs.is_some(),
            subsystem: None,
            more_host_keys: Vec::new(),
            server,
        };
        sshd.write_config();
        sshd.restart().await;
        sshd
    }

    fn write_config(&self) {
        if self.server == Server::Proftpd {
            return self.write_proftpd_config();
        }
        let d = self.dir.path().display();
        let subsystem = self.subsystem.as_deref().unwrap_or("internal-sftp");
        let more: String = self
            .more_host_keys
            .iter()
            .map(|key| format!("HostKey {}\n", key.display()))
            .collect();
        let config = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\n{more}PidFile {d}/sshd.pid\n\
             AuthorizedKeysFile {d}/authorized_keys\nPasswordAuthentication no\n\
             KbdInteractiveAuthentication no\nPubkeyAuthentication yes\n\
             PermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\n\
             Subsystem sftp {subsystem}\nLogLevel VERBOSE\n",
            port = self.port
        );
        std::fs::write(self.dir.path().join("sshd_config"), config).unwrap();
    }

    /// `mod_sftp` on the port as root, with the host keys and the client's
    /// key in RFC 4716 form; its logs in `sshd.log`.
    fn write_proftpd_config(&self) {
        assert!(self.subsystem.is_none(), "a relay needs sshd");
        let d = self.dir.path().display();
        let rfc4716 = Command::new("ssh-keygen")
            .args(["-e", "-f"])
            .arg(self.dir.path().join("id_ed25519.pub"))
            .output()
            .expect("ssh-keygen -e");
        assert!(rfc4716.status.success(), "ssh-keygen -e");
        std::fs::write(
            self.dir.path().join("authorized_keys.rfc4716"),
            rfc4716.stdout,
        )
        .unwrap();
        let more: String = self
            .more_host_keys
            .iter()
            .map(|key| format!("SFTPHostKey {}\n", key.display()))
            .collect();
        let config = format!(
            "ModulePath /usr/lib/proftpd\nLoadModule mod_sftp.c\nServerName \"esr-test\"\n\
             ServerType standalone\nDefaultServer on\nDefaultAddress 127.0.0.1\nPort {port}\n\
             UseIPv6 off\nUser root\nGroup root\nPidFile {d}/proftpd.pid\n\
             ScoreboardFile {d}/proftpd.scoreboard\nDelayTable none\nWtmpLog off\n\
             TransferLog none\nSystemLog {d}/sshd.log\nRootLogin on\nUseFtpUsers off\n\
             RequireValidShell off\nUseReverseDNS off\nSFTPEngine on\nSFTPLog {d}/sshd.log\n\
             SFTPHostKey {d}/host_key\n{more}SFTPAuthorizedUserKeys file:{d}/authorized_keys.rfc4716\n\
             SFTPAuthMethods publickey\n",
            port = self.port
        );
        std::fs::write(self.dir.path().join("proftpd.conf"), config).unwrap();
    }

    /// Serves a host key of `kind` (`rsa`, `ecdsa`) besides the ed25519
    /// one, after a restart; its public line (`TYPE BASE64 COMMENT`).
    pub async fn add_host_key(&mut self, kind: &str) -> String {
        let path = self.dir.path().join(format!("host_key_{kind}"));
        keygen_of(kind, &path);
        self.more_host_keys.push(path.clone());
        self.kill();
        self.write_config();
        self.restart().await;
        std::fs::read_to_string(path.with_extension("pub")).unwrap()
    }

    /// Starts (again) the server, and waits until it accepts connections.
    pub async fn restart(&mut self) {
        std::fs::create_dir_all("/run/sshd").expect("sshd's privilege separation folder");
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(self.dir.path().join("sshd.log"))
            .unwrap();
        let mut command = match self.server {
            Server::OpenSsh => {
                let mut command = Command::new("/usr/sbin/sshd");
                command
                    .args(["-D", "-e", "-f"])
                    .arg(self.dir.path().join("sshd_config"));
                command
            }
            Server::Proftpd => {
                let mut command = Command::new("/usr/sbin/proftpd");
                command
                    .args(["-n", "-c"])
                    .arg(self.dir.path().join("proftpd.conf"));
                command
            }
        };
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("sshd or proftpd (Debian openssh-server, proftpd-core; run scripts/services)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .is_err()
        {
            assert!(
                Instant::now() < deadline,
                "sshd did not listen: {}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILLs the server and every session process it started.
    pub fn kill(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let mut pids = descendants(child.id());
        pids.push(child.id());
        for pid in pids {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
        let _ = child.wait();
    }

    /// `sftp://root@127.0.0.1:PORT/<inbox>`.
    pub fn destination(&self) -> String {
        format!(
            "sftp://root@127.0.0.1:{}{}",
            self.port,
            self.inbox.display()
        )
    }

    /// The environment that points the binary at this server.
    pub fn env(&self) -> Vec<(String, String)> {
        let mut env = env_line(
            "ESR_SFTP__CONNECT_TIMEOUT_MS=3000 ESR_SFTP__REQUEST_TIMEOUT_MS=5000 \
             ESR_SFTP__MIN_DELAY_MS=100 ESR_SFTP__MAX_DELAY_MS=1000 ESR_SFTP__MAX_ELAPSED_MS=30000",
        );
        env.extend([
            ("ESR_EXPORT__DESTINATION".to_owned(), self.destination()),
            (
                "ESR_SFTP__PRIVATE_KEY_FILE".to_owned(),
                self.key.display().to_string(),
            ),
            (
                "ESR_SFTP__KNOWN_HOSTS_FILE".to_owned(),
                self.known_hosts.display().to_string(),
            ),
        ]);
        env
    }

    /// The published names in the inbox, sorted.
    pub fn files(&self) -> Vec<String> {
        names(&self.inbox)
            .into_iter()
            .filter(|n| n != TEMP_DIR && n != "lost+found")
            .collect()
    }

    /// What the temporary folder holds.
    pub fn temporaries(&self) -> Vec<String> {
        names(&self.inbox.join(TEMP_DIR))
    }

    /// Checks every `.DAT` against its manifest and returns the ids of its
    /// detail lines per file name. Panics on a malformed file.
    pub fn delivered(&self) -> std::collections::BTreeMap<String, Vec<String>> {
        let mut files = std::collections::BTreeMap::new();
        for name in self.files().into_iter().filter(|n| n.ends_with(".DAT")) {
            let bytes = std::fs::read(self.inbox.join(&name)).unwrap();
            let manifest: serde_json::Value = serde_json::from_slice(
                &std::fs::read(self.inbox.join(format!("{name}.json"))).expect("manifest"),
            )
            .expect("manifest JSON");
            assert_eq!(
                manifest["sha256"],
                hex::encode(Sha256::digest(&bytes)),
                "{name}"
            );
            let ids: Vec<String> = std::str::from_utf8(&bytes)
                .unwrap()
                .split("\r\n")
                .filter(|line| line.starts_with("APP,"))
                .map(|line| line.split(',').nth(1).unwrap().to_owned())
                .collect();
            assert_eq!(manifest["recordCount"], ids.len(), "{name}");
            files.insert(name, ids);
        }
        files
    }

    /// Nothing but published files: no temporary or probe file is left.
    pub fn assert_only_published(&self) {
        assert!(
            self.temporaries().is_empty(),
            "left behind: {:?}",
            self.temporaries()
        );
        for name in self.files() {
            assert!(
                name.ends_with(".DAT") || name.ends_with(".DAT.json"),
                "unexpected {name}"
            );
        }
    }

    /// The SHA-256 of a published file.
    pub fn sha256(&self, name: &str) -> String {
        hex::encode(Sha256::digest(
            std::fs::read(self.inbox.join(name)).unwrap(),
        ))
    }

    /// Makes the inbox read-only (a read-only bind mount over it).
    pub fn read_only(&mut self) {
        mount(&["--bind"], &self.inbox);
        let status = Command::new("mount")
            .args(["-o", "remount,bind,ro"])
            .arg(&self.inbox)
            .status()
            .unwrap();
        assert!(status.success(), "remount read-only");
        self.mounted = true;
    }

    /// What the server logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }
}

impl Drop for TestSshd {
    fn drop(&mut self) {
        self.kill();
        let unmount = || {
            Command::new("umount")
                .arg(&self.inbox)
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        while self.mounted && unmount() {}
    }
}

fn mount(args: &[&str], target: &Path) {
    let source: Vec<&std::ffi::OsStr> = if args.contains(&"--bind") {
        vec![target.as_os_str()]
    } else {
        vec![]
    };
    let status = Command::new("mount")
        .args(args)
        .args(source)
        .arg(target)
        .status()
        .expect("mount");
    assert!(status.success(), "mount {args:?} {}", target.display());
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Every process below `pid`, from `/proc`.
fn descendants(pid: u32) -> Vec<u32> {
    let mut parents = std::collections::HashMap::<u32, Vec<u32>>::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if let Some(ppid) = ppid {
            parents.entry(ppid).or_default().push(child);
        }
    }
    let mut found = Vec::new();
    let mut todo = vec![pid];
    while let Some(next) = todo.pop() {
        for child in parents.get(&next).cloned().unwrap_or_default() {
            found.push(child);
            todo.push(child);
        }
    }
    found
}
