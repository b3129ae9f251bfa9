#!/usr/bin/env bash
# The original backend-server's acceptance checks (its tests/install.sh, tests/backends/*.sh and
# what its install scripts promise), re-asked of bs: `just manage test` twice on a fresh Debian,
# then every property those checks hold a host to that applies to bs on Debian. What does not
# apply, and why, is listed in docs/bs-host.md ("The original's acceptance checks").
#
# The container has no network: packages come from a local apt repository on its file system,
# the real libpam-pwquality and cracklib-runtime (from the deb cache 15-host fills) and tiny
# stand-ins built here for the names the original installs, holds and purges (docker.io, apport,
# popularity-contest). Ubuntu's noisy motd scripts, rsync's unit and cloud-init's hosts template
# are stand-ins too: a Debian image has none of them.
set -euo pipefail
# shellcheck source=tests/system/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

st_require_bins bs-host bs-users bs-perms bs-docker bs-chrony bs-jobs bs-release just
if ! command -v dpkg-deb >/dev/null || ! command -v dpkg-scanpackages >/dev/null; then
    st_fail "dpkg-deb and dpkg-scanpackages are needed on this machine (dpkg-dev; bin/bootstrap)"
fi
ST_DUMP_FILES="/etc/bs/local.toml /etc/pam.d/common-password /etc/pam.d/common-session /etc/hosts"

# --- the local apt repository ------------------------------------------------------------------
real_debs=(libpam-pwquality libpwquality1 libpwquality-common libcrack2 cracklib-runtime file
    libmagic1 libmagic-mgc)
cache=${BS_SYSTEST_DEB_CACHE:-/var/cache/bs-systest/debs}
mkdir -p "$cache"
for p in "${real_debs[@]}"; do
    if ! compgen -G "$cache/${p}_*.deb" >/dev/null; then
        (cd "$cache" && apt-get download "$p" >&2) ||
            st_fail "cannot download $p into $cache (the first run needs this machine's apt sources)"
    fi
done
repo=$ST_LOG_DIR/apt-repo
rm -rf "$repo" && mkdir -p "$repo/build"
for p in "${real_debs[@]}"; do cp "$cache/${p}"_*.deb "$repo/"; done
for p in docker.io apport popularity-contest; do
    d=$repo/build/$p
    mkdir -p "$d/DEBIAN" "$d/usr/share/bs-test"
    printf 'Package: %s\nVersion: 1.0\nArchitecture: all\nMaintainer: bs tests <bs@localhost>\nDescription: stand-in for %s\n' \
        "$p" "$p" >"$d/DEBIAN/control"
    echo 1.0 >"$d/usr/share/bs-test/$p"
    dpkg-deb --root-owner-group -b "$d" "$repo/${p}_1.0_all.deb" >/dev/null
done
rm -rf "$repo/build"
(cd "$repo" && dpkg-scanpackages . /dev/null 2>/dev/null >Packages)

# The privacy trees on volumes, as a backend keeps them on a data disk: the image's file system
# (fuse-overlayfs here) does not give new files their parent's default ACL, a real one does.
high=$(st_volume high)
medium=$(st_volume medium)
st_start original -v "$high:/srv/high_privacy" -v "$medium:/srv/medium_privacy"
st_exec mkdir -p /srv/apt
tar -C "$repo" -c . | st_exec tar -C /srv/apt -x
st_sh 'mv /etc/apt/sources.list /etc/apt/sources.list.disabled 2>/dev/null || true
    rm -f /etc/apt/sources.list.d/*
    echo "deb [trusted=yes] file:/srv/apt ./" >/etc/apt/sources.list.d/bs-test-local.list
    apt-get -q update >/dev/null'

st_step "the host as a stock Ubuntu install would leave it (stand-ins where Debian has nothing)"
st_sh 'DEBIAN_FRONTEND=noninteractive apt-get -q install -y apport popularity-contest >/dev/null'
st_sh 'mkdir -p /lib/systemd/system /etc/systemd/system/multi-user.target.wants /etc/cloud/templates
    printf "[Service]\nExecStart=/usr/bin/rsync --daemon --no-detach\n[Install]\nWantedBy=multi-user.target\n" \
        >/lib/systemd/system/rsync.service
    ln -s /lib/systemd/system/rsync.service /etc/systemd/system/multi-user.target.wants/
    for s in 10-help-text 50-motd-news 91-release-upgrade; do
        printf "#!/bin/sh\necho NOISE FROM %s\n" "$s" >"/etc/update-motd.d/$s"
        chmod 755 "/etc/update-motd.d/$s"
    done
    printf "## template:jinja\n127.0.0.1 {{fqdn}} {{hostname}}\n127.0.0.1 localhost\n" \
        >/etc/cloud/templates/hosts.debian.tmpl
    mkdir -p /srv/high_privacy/workspaces/old
    echo "1,2" >/srv/high_privacy/workspaces/old/out.csv
    chmod 666 /srv/high_privacy/workspaces/old/out.csv'
# The test backend as it is, plus what the original installs and holds that this repository has.
st_sh 'mkdir -p /etc/bs && cat >/etc/bs/local.toml' <<'TOML'
[host]
packages = ["openssh-server", "sudo", "acl", "libpam-pwquality", "cracklib-runtime", "docker.io"]
hold = ["docker.io"]

[perms.pam]
pwquality = true
TOML

manage() { st_tool sh -c 'cd /opt/bs && exec just manage test'; }
st_step "just manage test, twice (the original runs its install twice for idempotency)"
manage
assert_eq 0 "$ST_RC" "exit status of the first 'just manage test'"
manage
assert_eq 0 "$ST_RC" "exit status of the second 'just manage test'"
assert_json_eq '[.[] | select(.changed == true)] | length' 0 "$(jq -s -c . <<<"$ST_JSON")" \
    "the second run changes nothing"

st_step "the backend's name (bootstrap): in login shells, and just whereami"
assert_eq test "$(st_exec bash -lc 'echo "$BACKEND"')" "BACKEND in a login shell"
assert_json_eq 'select(.type == "whereami") | .backend' '"test"' \
    "$(st_exec bash -lc 'cd /opt/bs && just whereami')" "just whereami from a login shell"

st_step "groups, the service account and the people (install.sh, update-users.sh)"
assert_managed_groups
assert_person test-developer "developers researchers reviewers docker sudo"
assert_person TestCapitals "developers researchers reviewers docker sudo"
assert_person test-researcher "researchers reviewers docker"
for user in test-developer testcapitals test-researcher; do
    assert_eq /bin/bash "$(st_exec getent passwd "$user" | cut -d: -f7)" "$user's shell is bash"
done

st_step "sshd: the original's hardening, as sshd itself reads its configuration"
sshd=$(st_exec sshd -T)
for setting in "permitrootlogin no" "passwordauthentication no" "maxauthtries 4" \
    "x11forwarding no" "clientaliveinterval 300" "maxstartups 10:30:60"; do
    assert_contains "$sshd" $'\n'"$setting"$'\n' "sshd -T: $setting"
done
# The same four MACs (bs lists the 512-bit ones first; sshd offers them in the listed order).
assert_eq "hmac-sha2-256,hmac-sha2-256-etm@openssh.com,hmac-sha2-512,hmac-sha2-512-etm@openssh.com" \
    "$(awk '$1 == "macs" { print $2 }' <<<"$sshd" | tr ',' '\n' | sort | paste -sd,)" "sshd -T: macs"
key=$(st_fixture_key test-developer)
st_first_login "$key" test-developer
dev_password=$ST_PASSWORD
assert_success "a key login works" st_ssh "$key" test-developer /bin/true

st_step "idle shells end after 15 minutes: TMOUT=900, readonly, from /etc/profile"
assert_eq "900 readonly" "$(st_exec bash -c '. /etc/profile; printf "%s " "$TMOUT"; (TMOUT=5) 2>/dev/null && echo writable || echo readonly')" \
    "TMOUT after /etc/profile"

st_step "umask 027 (pen-test 2.21): login.defs, SSH, su - and sudo -i sessions"
assert_eq 027 "$(st_exec awk '$1 == "UMASK" { print $2 }' /etc/login.defs)" "UMASK in login.defs"
assert_eq 0027 "$(st_ssh "$key" test-developer umask)" "an SSH session"
st_ssh "$key" test-developer 'echo x >~/by-ssh'
assert_eq 640 "$(st_exec stat -c %a /home/test-developer/by-ssh)" "a file made over SSH"
assert_eq 0027 "$(st_exec su - test-developer -c umask)" "an su - session"
# sudo itself would keep the caller's 0022 (or'ed with its own 0022): only pam_umask in sudo -i's
# session stack makes it 0027.
assert_eq 0027 "$(st_sh 'su - test-developer -c "umask 0022; sudo -S -i umask" <<<"$1" 2>/dev/null' \
    "$dev_password")" "a sudo -i session started from a shell at 0022"

st_step "password quality (pen-test 2.24): chpasswd says BAD PASSWORD and refuses; a strong one is taken"
st_exec useradd testpwuser --create-home --shell /bin/bash
shadow_before=$(st_exec getent shadow testpwuser)
for weak in simple 'Aa1!Aa1!Aa1!x' 'nodigitsorsymbolsatall'; do
    out=$(st_sh 'echo "testpwuser:$1" | chpasswd 2>&1' "$weak") && st_fail "chpasswd took '$weak'"
    assert_contains "$out" "BAD PASSWORD" "chpasswd says why it refuses '$weak'"
done
assert_eq "$shadow_before" "$(st_exec getent shadow testpwuser)" "the refused passwords were not set"
assert_success "a strong password is taken" st_sh 'echo "testpwuser:a\$#sdad0822daf0flASD" | chpasswd'

st_step "sudo: developers only, with their password; use_pty and a log"
st_exec useradd testsudouser --create-home --shell /bin/bash
sudo_ls() { st_sh 'su - testsudouser -c "sudo -S ls /root" <<<"$1"' "${1:-}"; }
assert_failure "not in developers: no sudo" sudo_ls
st_exec usermod -a -G developers testsudouser
assert_failure "in developers, but no password set: no sudo" sudo_ls
sudo_password='V4al1d-p4##0rd'
st_sh 'echo "testsudouser:$1" | chpasswd' "$sudo_password"
assert_success "in developers, with the password: sudo works" sudo_ls "$sudo_password"
assert_contains "$(st_exec cat /var/log/sudo.log)" "testsudouser" "sudo logs to /var/log/sudo.log"
defaults=$(st_exec sudo -l -U testsudouser)
assert_contains "$defaults" "use_pty" "sudo's defaults: use_pty"
assert_contains "$defaults" "logfile=/var/log/sudo.log" "sudo's defaults: the log file"
# No systemctl in the image, so sudo's own listing of the rules stands in for running them.
rules=$(st_exec sudo -l -U opensafely | sed -n '/may run the following/,$p')
assert_contains "$rules" "(root) NOPASSWD: /usr/bin/systemctl start bs-jobs-poller.service" \
    "the service account may start the job runner's units, no password"
assert_contains "$rules" "/usr/bin/systemctl restart bs-jobs-worker.service" "and restart them"
assert_eq 1 "$(grep -c '^ *(' <<<"$rules")" "and nothing else: one rule"

st_step "privacy trees (jobrunner install): owned by the service account, no access for others"
for tree in /srv/high_privacy /srv/medium_privacy; do
    assert_eq "750 opensafely opensafely" "$(st_exec stat -c '%a %U %G' "$tree/workspaces")" \
        "$tree/workspaces"
done
assert_eq "640 opensafely opensafely" \
    "$(st_exec stat -c '%a %U %G' /srv/high_privacy/workspaces/old/out.csv)" \
    "a file found world-writable in high privacy"
assert_failure "a researcher cannot list high privacy" \
    st_exec runuser -u test-researcher -- ls /srv/high_privacy/workspaces
st_exec runuser -u opensafely -- sh -c 'umask 027; mkdir -p /srv/medium_privacy/workspaces/w1 &&
    echo "a,b" >/srv/medium_privacy/workspaces/w1/table.csv'
assert_eq "a,b" "$(st_exec runuser -u test-reviewer -- cat /srv/medium_privacy/workspaces/w1/table.csv)" \
    "a reviewer reads what the service account writes in medium privacy (default ACL)"
assert_contains "$(st_exec getfacl -p /srv/medium_privacy/workspaces)" "default:group:reviewers:r-x" \
    "medium privacy's default ACL"

st_step "hosts, motd, rsync (install.sh)"
hosts=$(st_exec cat /etc/hosts)
assert_contains "$hosts" "157.245.31.108	release.opensafely.org github-proxy.opensafely.org" \
    "the core hosts in /etc/hosts"
assert_contains "$hosts" "192.0.2.10	db.test.invalid" "the backend's own hosts"
assert_contains "$(st_exec cat /etc/cloud/templates/hosts.debian.tmpl)" "157.245.31.108	release.opensafely.org" \
    "cloud-init's template has them too"
motd=$(st_exec run-parts /etc/update-motd.d)
assert_contains "$motd" "# This is the TEST OpenSAFELY backend" "the motd banner"
assert_not_contains "$motd" "NOISE FROM" "the noisy motd scripts are silenced"
assert_failure "rsync's daemon is disabled" \
    st_exec test -e /etc/systemd/system/multi-user.target.wants/rsync.service

st_step "packages (install_packages.sh): installed, purged, the engine held"
for p in libpam-pwquality cracklib-runtime docker.io; do
    assert_eq installed "$(st_exec dpkg-query -W -f '${db:Status-Status}' "$p")" "$p installed"
done
for p in apport popularity-contest; do
    assert_failure "$p is purged" st_exec dpkg-query -W -f '${Status}' "$p"
done
assert_eq docker.io "$(st_exec apt-mark showhold)" "docker.io is held"
assert_contains "$(st_exec apt-config dump)" 'Unattended-Upgrade::Package-Blacklist:: "^docker[.]io$"' \
    "and unattended-upgrades leaves it alone"
st_tool sh -c 'cd /opt/bs && exec just --justfile backends/test/justfile upgrade'
assert_eq 0 "$ST_RC" "the upgrade command completes"

st_step "disabling a person (disable-user.sh): keys gone, out of developers, password locked"
st_exec sed -i '/^TestCapitals/d' /opt/bs/backends/test/developers
manage
assert_eq 0 "$ST_RC" "exit status of 'just manage test' after the removal"
assert_failure "testcapitals' keys file is gone" st_exec test -e /etc/ssh/authorized_keys.d/testcapitals
assert_not_contains " $(st_exec id -nG testcapitals) " " developers " "testcapitals is not in developers"
assert_eq L "$(st_exec passwd -S testcapitals | awk '{ print $2 }')" "testcapitals' password is locked"
