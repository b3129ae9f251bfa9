use super::*;

const DEFAULTS: &str = r#"
[backend]
name = "default"

[service_account]
name = "opensafely"
uid = 10000
gid = 10000
home = "/home/opensafely"
groups = ["docker"]

[paths]
high_privacy = "/srv/high_privacy"
medium_privacy = "/srv/medium_privacy"

[users.groups.developers]
[users.groups.reviewers]
gid = 10010

[users.lists.developers]
file = "developers"
groups = ["developers", "reviewers"]
"#;

struct Repo {
    dir: tempfile::TempDir,
    root: tempfile::TempDir,
}

impl Repo {
    fn new(backend_toml: &str) -> Repo {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("backends/test")).unwrap();
        std::fs::write(dir.path().join("backends/defaults.toml"), DEFAULTS).unwrap();
        std::fs::write(dir.path().join("backends/test/backend.toml"), backend_toml).unwrap();
        Repo {
            dir,
            root: tempfile::tempdir().unwrap(),
        }
    }

    fn local(&self, text: &str) {
        std::fs::create_dir_all(self.root.path().join("etc/bs")).unwrap();
        std::fs::write(self.root.path().join("etc/bs/local.toml"), text).unwrap();
    }

    fn load(&self) -> Result<Config> {
        Config::load(
            &Source {
                repo: self.dir.path().to_path_buf(),
                backend: "test".into(),
            },
            &Root::new(self.root.path()).unwrap(),
        )
    }
}

#[test]
fn layers_merge_tables_and_later_layers_win() {
    let repo = Repo::new(
        "[backend]\nname = \"test\"\n[users.groups.researchers]\ngid = 10020\n[users.lists.developers]\nfile = \"developers\"\ngroups = [\"developers\"]\n",
    );
    repo.local("[http]\ntimeout_secs = 3\n");
    let c = repo.load().unwrap();
    assert_eq!(c.backend.name, "test");
    assert_eq!(c.service_account.uid, 10000);
    // tables merge: the backend adds a group, the default ones stay
    assert_eq!(c.users.groups.len(), 3);
    assert_eq!(c.users.groups["reviewers"].gid, Some(10010));
    // lists replace
    assert_eq!(c.users.lists["developers"].groups, vec!["developers"]);
    assert_eq!(c.http.timeout_secs, 3);
    assert_eq!(c.sources.len(), 3);
}

#[test]
fn an_unknown_key_is_an_error_naming_the_file_and_the_key() {
    let repo = Repo::new("[backend]\nname = \"test\"\n[users]\nfetch_keyz = true\n");
    let err = repo.load().unwrap_err();
    match &err {
        CoreError::Config { file, key, .. } => {
            assert!(file.ends_with("backends/test/backend.toml"), "{file:?}");
            assert_eq!(key, "users.fetch_keyz");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(err.exit(), crate::Exit::Usage);
}

#[test]
fn a_bad_value_in_the_local_layer_names_the_local_file() {
    let repo = Repo::new("[backend]\nname = \"test\"\n");
    repo.local("[users.groups.reviewers]\ngid = \"ten\"\n");
    let err = repo.load().unwrap_err();
    match &err {
        CoreError::Config { file, key, .. } => {
            assert!(file.ends_with("etc/bs/local.toml"), "{file:?}");
            assert_eq!(key, "users.groups.reviewers.gid");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_missing_required_layer_is_an_error() {
    let repo = Repo::new("");
    std::fs::remove_file(repo.dir.path().join("backends/test/backend.toml")).unwrap();
    let err = repo.load().unwrap_err();
    assert!(
        matches!(err, CoreError::ConfigLayerMissing { .. }),
        "{err:?}"
    );
    assert_eq!(err.exit(), crate::Exit::Usage);
}

#[test]
fn a_syntax_error_names_the_file_and_line() {
    let repo = Repo::new("[backend]\nname = \"test\"\n\n[users\n");
    let msg = repo.load().unwrap_err().to_string();
    assert!(
        msg.contains("backend.toml") && msg.contains("line 4"),
        "{msg}"
    );
}

#[test]
fn a_list_naming_an_undeclared_group_is_refused() {
    let repo = Repo::new(
        "[backend]\nname = \"test\"\n[users.lists.x]\nfile = \"x\"\ngroups = [\"nope\"]\n",
    );
    let err = repo.load().unwrap_err();
    match &err {
        CoreError::Config { file, key, message } => {
            assert!(file.ends_with("backend.toml"));
            assert_eq!(key, "users.lists.x.groups");
            assert!(message.contains("nope"));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn backend_names_cannot_walk_out_of_backends() {
    let repo = Repo::new("[backend]\nname = \"test\"\n");
    let err = Config::load(
        &Source {
            repo: repo.dir.path().to_path_buf(),
            backend: "../etc".into(),
        },
        &Root::new(repo.root.path()).unwrap(),
    )
    .unwrap_err();
    assert!(matches!(err, CoreError::Usage(_)));
}

#[test]
fn a_health_check_that_could_never_pass_or_fail_is_refused() {
    for (setting, key) in [
        ("healthcheck_retries = 0", "healthcheck_retries"),
        ("healthcheck_timeout_secs = 0", "healthcheck_interval_secs"),
        ("healthcheck_interval_secs = 0", "healthcheck_interval_secs"),
    ] {
        let repo = Repo::new(&format!(
            "[backend]\nname = \"test\"\n[docker.services.web]\nimage = \"web:1\"\nhealthcheck = [\"true\"]\n{setting}\n"
        ));
        match repo.load().unwrap_err() {
            CoreError::Config { key: k, .. } => {
                assert_eq!(k, format!("docker.services.web.{key}"), "{setting}")
            }
            other => panic!("{setting}: {other:?}"),
        }
    }
}

#[test]
fn every_server_url_must_be_http_or_https_with_a_host() {
    use super::is_http_url;
    for good in [
        "https://github-proxy.opensafely.org",
        "http://127.0.0.1:8765/keys",
    ] {
        assert!(is_http_url(good), "{good}");
    }
    for bad in [
        "",
        "httpx://a",
        "http://",
        "https:///path",
        "ftp://a",
        "http://a b",
        "github.com",
    ] {
        assert!(!is_http_url(bad), "{bad:?}");
    }
    for (setting, key) in [
        (
            "[users]\nfetch_keys = true\nkey_source = \"httpx://proxy\"\n",
            "users.key_source",
        ),
        ("[jobs]\ncontroller = \"jobs.example\"\n", "jobs.controller"),
        ("[release]\nserver = \"https://\"\n", "release.server"),
    ] {
        // researchers: release's default authors must be a declared group.
        let repo = Repo::new(&format!(
            "[backend]\nname = \"test\"\n[users.groups.researchers]\n{setting}"
        ));
        match repo.load().unwrap_err() {
            CoreError::Config { key: k, .. } => assert_eq!(k, key, "{setting}"),
            other => panic!("{setting}: {other:?}"),
        }
    }
}

#[test]
fn the_mass_change_guard_and_adopt_list_are_checked() {
    let repo = Repo::new("[users.groups.researchers]\n[users.guard]\nmax_disable_share = 0.5\n");
    let c = repo.load().unwrap();
    assert_eq!(c.users.guard.max_disable_share, 0.5);
    assert_eq!(
        c.users.guard.max_key_drop_share, 0.25,
        "defaults fill the rest"
    );
    repo.local("[users.guard]\nmax_key_drop_share = 2.0\n");
    let err = repo.load().unwrap_err().to_string();
    assert!(err.contains("users.guard.max_key_drop_share"), "{err}");
    repo.local("[users]\nadopt = [\"Bob\"]\n");
    let err = repo.load().unwrap_err().to_string();
    assert!(err.contains("users.adopt"), "{err}");
}

#[test]
fn host_keys_are_checked_before_anything_reaches_apt() {
    for (toml, key) in [
        ("[host]\npackages = [\"-oDebug=1\"]\n", "host.packages"),
        ("[host]\npurge = [\"Apport\"]\n", "host.purge"),
        (
            "[host]\npackages = [\"curl\"]\npurge = [\"curl\"]\n",
            "host.purge",
        ),
        (
            "[host]\nhosts = [\"release.example.org 10.0.0.1\"]\n",
            "host.hosts",
        ),
        (
            "[host]\nbackend_hosts = [\"10.0.0.1\"]\n",
            "host.backend_hosts",
        ),
        (
            "[host]\nbackend_hosts = [\"10.0.0.1 bad_name!\"]\n",
            "host.backend_hosts",
        ),
        ("[host]\nmotd_silence = [\"../x\"]\n", "host.motd_silence"),
        (
            "[host]\ndisable_services = [\"rsync\"]\n",
            "host.disable_services",
        ),
    ] {
        let err = Repo::new(&format!(
            "[backend]\nname = \"t\"\n[users.groups.researchers]\n{toml}"
        ))
        .load()
        .unwrap_err();
        assert!(err.to_string().contains(key), "{toml}: {err}");
        assert_eq!(err.exit(), crate::Exit::Usage);
    }
    let ok = Repo::new(
        "[backend]\nname = \"t\"\n[users.groups.researchers]\n[host]\npackages = [\"libstdc++6\", \"docker.io\"]\nhosts = [\"::1 a.example.org b\"]\n",
    )
    .load()
    .unwrap();
    assert_eq!(ok.host.packages, vec!["libstdc++6", "docker.io"]);
}

#[test]
fn pwquality_policy_keys_and_kinds_are_pwquality_confs() {
    let err = Repo::new("[backend]\nname = \"t\"\n[users.groups.researchers]\n[perms.pam.pwquality_policy]\nminlenght = 14\n")
        .load()
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("perms.pam.pwquality_policy.minlenght"),
        "{err}"
    );
    let err = Repo::new("[backend]\nname = \"t\"\n[users.groups.researchers]\n[perms.pam.pwquality_policy]\nminlen = \"14\"\n")
        .load()
        .unwrap_err();
    assert!(err.to_string().contains("expects a number"), "{err}");
    let config = Repo::new(
        "[backend]\nname = \"t\"\n[users.groups.researchers]\n[perms.pam]\npwquality = true\n[perms.pam.pwquality_policy]\nminlen = 14\nenforce_for_root = true\nlocal_users_only = false\ndictcheck = 0\n",
    )
    .load()
    .unwrap();
    let text = config.perms.pam.render_pwquality("t");
    assert!(
        text.ends_with("dictcheck = 0\nenforce_for_root\nminlen = 14\n"),
        "{text}"
    );
    assert!(!config.perms.pam.dictcheck());
}
