#!/usr/bin/env bash
# bs-host and bs-perms' PAM hardening on a fresh Debian, with packages from a local apt repository
# on the container's file system (no network): the real libpam-pwquality and cracklib-runtime
# (downloaded once on the test machine with `apt-get download`, cached) and tiny packages built
# here with dpkg-deb (an "engine" to hold, a tool to upgrade, one to purge).
# Proves: a real SSH login shell (and su -) has umask 0027 and its files are not readable by
# others; chpasswd and passwd refuse weak passwords and take a strong one; a package apt cannot
# find, or a dpkg lock another process keeps, fails its item while the others converge; the held
# engine stays held through `apt-get upgrade`, unattended-upgrades' dry run and `bs-host upgrade`,
# and moves only with `upgrade --engine`, refused while a job container runs; the hosts block
# (also in cloud-init's template), motd banner, silenced script, disabled unit and BACKEND are as
# configured; removing pam_umask from the stack is drift that apply repairs; sudo -i sessions are
# at 0027 too; pwquality = false takes pam_pwquality out of the stack (and it stays out), true puts
# it back; a second run changes nothing.
set -euo pipefail
# shellcheck source=tests/system/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

st_require_bins bs-host bs-users bs-perms
if ! command -v dpkg-deb >/dev/null || ! command -v dpkg-scanpackages >/dev/null; then
    st_fail "dpkg-deb and dpkg-scanpackages are needed on this machine (dpkg-dev; bin/bootstrap)"
fi
ST_DUMP_FILES="/etc/bs/local.toml /etc/pam.d/common-session /etc/pam.d/common-password /etc/hosts"

# --- the local apt repository, made on this machine -----------------------------------------------
real_debs=(libpam-pwquality libpwquality1 libpwquality-common libcrack2 cracklib-runtime file
    libmagic1 libmagic-mgc
    unattended-upgrades python3-apt python-apt-common distro-info-data python3-dbus
    python3-distro-info lsb-release xz-utils libdbus-1-3 libglib2.0-0)
# The cache is a fixed path so 90-readme can hand it to the nested run (which has no network).
cache=${BS_SYSTEST_DEB_CACHE:-/var/cache/bs-systest/debs}
mkdir -p "$cache"
for p in "${real_debs[@]}"; do
    if ! compgen -G "$cache/${p}_*.deb" >/dev/null; then
        (cd "$cache" && apt-get download "$p" >&2) ||
            st_fail "cannot download $p into $cache (the first run needs this machine's apt sources)"
    fi
done
# The container reaches this machine's engine (to see job containers); job containers are told
# apart by a label of this run only, so other runs' containers are never counted.
job_label=bs.systest.job-$ST_RUN
st_start host -v /var/run/docker.sock:/var/run/docker.sock
docker cp "$(command -v docker)" "$ST_C:/usr/local/bin/docker" >/dev/null
repo=$ST_LOG_DIR/apt-repo
v2=$ST_LOG_DIR/apt-v2 # the newer versions, added to the repository later
rm -rf "$repo" "$v2" && mkdir -p "$repo" "$v2"
cp "$cache"/*.deb "$repo/"
# mkdeb NAME VERSION: a tiny package whose file says its version.
mkdeb() {
    local d="$repo/build/$1-$2"
    mkdir -p "$d/DEBIAN" "$d/usr/share/bs-test"
    printf 'Package: %s\nVersion: %s\nArchitecture: all\nMaintainer: bs tests <bs@localhost>\nDescription: bs-host test package\n' \
        "$1" "$2" >"$d/DEBIAN/control"
    echo "$2" >"$d/usr/share/bs-test/$1"
    dpkg-deb --root-owner-group -b "$d" "$3/${1}_${2}_all.deb" >/dev/null
}
for p in bs-test-engine bs-test-tool bs-test-unwanted bs-test-extra; do mkdeb "$p" 1.0 "$repo"; done
for p in bs-test-engine bs-test-tool; do mkdeb "$p" 2.0 "$v2"; done
rm -rf "$repo/build"
# index: Packages, and a Release naming the origin unattended-upgrades is allowed to take from
# (trusted=yes in the source line: no signature, but apt checks the hash).
index() {
    (
        cd "$repo" && dpkg-scanpackages --multiversion . /dev/null 2>/dev/null >Packages &&
            printf 'Origin: bs-test\nLabel: bs-test\nSuite: bs-test\nCodename: bs-test\nDate: %s\nSHA256:\n %s %s Packages\n' \
                "$(date -Ru)" "$(sha256sum Packages | cut -d' ' -f1)" "$(stat -c %s Packages)" >Release
    )
}
index

st_exec sh -c 'mkdir -p /srv/apt'
tar -C "$repo" -c . | st_exec tar -C /srv/apt -x
st_sh 'mv /etc/apt/sources.list /etc/apt/sources.list.disabled
    echo "deb [trusted=yes] file:/srv/apt ./" >/etc/apt/sources.list.d/bs-test-local.list
    apt-get -q update >/dev/null'

st_step "the host as a stock install leaves it"
st_sh 'DEBIAN_FRONTEND=noninteractive apt-get -q install -y bs-test-engine bs-test-tool bs-test-unwanted >/dev/null'
st_sh 'mkdir -p /lib/systemd/system /etc/systemd/system/multi-user.target.wants /etc/cloud/templates
    printf "[Service]\nExecStart=/bin/true\n[Install]\nWantedBy=multi-user.target\n" >/lib/systemd/system/bs-test-daemon.service
    ln -s /lib/systemd/system/bs-test-daemon.service /etc/systemd/system/multi-user.target.wants/
    printf "#!/bin/sh\necho NEWS FROM THE VENDOR\n" >/etc/update-motd.d/50-motd-news
    chmod 755 /etc/update-motd.d/50-motd-news
    printf "## template:jinja\n127.0.0.1 {{fqdn}} {{hostname}}\n127.0.0.1 localhost\n" >/etc/cloud/templates/hosts.debian.tmpl'
local_toml() { # $1: extra packages
    st_sh "mkdir -p /etc/bs && cat >/etc/bs/local.toml" <<TOML
[host]
packages = ["openssh-server", "libpam-pwquality", "cracklib-runtime", "unattended-upgrades", "bs-test-tool"$1]
purge = ["bs-test-unwanted"]
hold = ["bs-test-engine"]
engine_package = "bs-test-engine"
disable_services = ["bs-test-daemon.service"]
motd_silence = ["50-motd-news", "10-help-text"]
apt_lock_timeout_secs = 5
docker = "/usr/local/bin/docker"
job_container_label = "$job_label"

[perms.pam]
pwquality = true
TOML
}
local_toml ', "bs-test-nosuch"'
converge() { st_tool sh -c "cd /opt/bs && BS_BACKEND=test BS_REPO=/opt/bs bin/converge $*"; }
converge bs-host bs-users bs-perms
assert_eq 1 "$ST_RC" "a package apt cannot find fails the run (exit 1)"
assert_json_eq 'select(.type == "error" and .tool == "bs-host") | "\(.kind) \(.target)"' \
    '"package_not_found bs-test-nosuch"' "$ST_JSON" "the one failed item"
assert_json_eq 'select(.type == "summary") | "\(.tool) \(.failed)"' \
    '"bs-host 1"
"bs-users 0"
"bs-perms 0"' "$ST_JSON" "the other tools ran; only one item failed"
assert_json_eq 'select(.type == "command" and .target == "bs-test-nosuch") | .status' 100 "$ST_JSON" \
    "apt-get's answer is in the records"

st_step "packages: installed, purged, held"
for p in libpam-pwquality cracklib-runtime unattended-upgrades bs-test-tool; do
    assert_eq "install ok installed" "$(st_exec dpkg-query -W -f '${Status}' "$p")" "$p installed"
done
assert_failure "bs-test-unwanted is purged" st_exec dpkg-query -W -f '${Status}' bs-test-unwanted
assert_eq bs-test-engine "$(st_exec apt-mark showhold)" "only the engine is held"
assert_contains "$(st_exec apt-config dump)" 'Unattended-Upgrade::Package-Blacklist:: "^bs-test-engine$"' \
    "unattended-upgrades is told to leave the held engine alone"

st_step "PAM: pam_umask and pam_pwquality in the stacks"
assert_contains "$(st_exec cat /etc/pam.d/common-session)" "pam_umask.so nousergroups" "common-session"
assert_contains "$(st_exec cat /etc/pam.d/common-session-noninteractive)" "pam_umask.so" \
    "common-session-noninteractive (sudo)"
assert_contains "$(st_exec cat /etc/pam.d/common-password)" "pam_pwquality.so" "common-password"

st_step "a real SSH login shell has umask 0027"
key=$(st_fixture_key test-developer)
st_first_login "$key" test-developer
assert_eq 0027 "$(st_ssh "$key" test-developer umask)" "umask of an SSH session"
st_ssh "$key" test-developer 'rm -f ~/made-by-ssh; echo data >~/made-by-ssh; mkdir -p ~/dir-by-ssh'
assert_eq "640 750" "$(st_exec stat -c '%a' /home/test-developer/made-by-ssh /home/test-developer/dir-by-ssh | paste -sd ' ')" \
    "a file and a directory made over SSH"
assert_failure "another user cannot read it" \
    st_exec runuser -u test-researcher -- cat /home/test-developer/made-by-ssh
assert_eq 0027 "$(st_exec su - test-developer -c umask)" "umask of an su - login shell"
# From a shell at 0022: sudo alone would keep that; pam_umask in sudo -i's session stack makes it 0027.
assert_eq 0027 "$(st_sh 'su - test-developer -c "umask 0022; sudo -S -i umask" <<<"$1" 2>/dev/null' \
    "$ST_PASSWORD")" "umask of a sudo -i session"
assert_eq test "$(st_exec su - test-developer -c 'echo $BACKEND')" "BACKEND in a login shell"

st_step "password quality: chpasswd and passwd refuse weak passwords"
for weak in simple password1 'Tr0ub4dorHorse' 'Sh0rt!pw'; do
    assert_failure "chpasswd refuses '$weak'" st_sh 'echo "test-researcher:$1" | chpasswd' "$weak"
done
assert_success "chpasswd takes a strong password" \
    st_sh 'echo "test-researcher:a\$#sdad0822daf0flASD" | chpasswd'
assert_failure "passwd refuses a weak one" st_sh 'printf "simple\nsimple\n" | passwd test-reviewer'
assert_success "passwd takes a strong one" \
    st_sh 'printf "%s\n%s\n" "Kx9#mPq2\$vLw7!z" "Kx9#mPq2\$vLw7!z" | passwd test-reviewer'

st_step "hosts, motd, services, whereami"
hosts=$(st_exec cat /etc/hosts)
assert_contains "$hosts" "157.245.31.108	release.opensafely.org" "core hosts in /etc/hosts"
assert_contains "$hosts" "192.0.2.10	db.test.invalid" "the backend's hosts in /etc/hosts"
assert_contains "$(st_exec cat /etc/cloud/templates/hosts.debian.tmpl)" "192.0.2.10	db.test.invalid" \
    "cloud-init's template has the block (its next rewrite keeps it)"
assert_contains "$(st_exec getent hosts db.test.invalid)" "192.0.2.10" "the name resolves"
motd=$(st_exec run-parts /etc/update-motd.d)
assert_contains "$motd" "# This is the TEST OpenSAFELY backend" "the motd banner"
assert_not_contains "$motd" "NEWS FROM THE VENDOR" "the silenced script does not run"
assert_failure "the unit is disabled" \
    st_exec test -L /etc/systemd/system/multi-user.target.wants/bs-test-daemon.service
st_tool sh -c 'cd /opt/bs && BS_BACKEND=test BS_REPO=/opt/bs bs-host whereami'
assert_json_eq 'select(.type == "whereami") | .backend' '"test"' "$ST_JSON" "whereami"

st_step "a second run changes nothing; check finds no drift"
local_toml ''
converge bs-host bs-users bs-perms
assert_eq 0 "$ST_RC" "second run"
assert_json_eq 'select(.type == "summary") | "\(.tool) \(.changed)"' \
    '"bs-host 0"
"bs-users 0"
"bs-perms 0"' "$ST_JSON" "nothing changed"
converge --verb check bs-host bs-perms
assert_eq 0 "$ST_RC" "check"

st_step "a dpkg lock another process keeps fails the install after apt_lock_timeout_secs, clearly"
# What apt and dpkg take: a POSIX (fcntl) lock on lock-frontend.
st_exec_bg python3 -c 'import fcntl, os, time
f = open("/var/lib/dpkg/lock-frontend", "w")
fcntl.lockf(f, fcntl.LOCK_EX)
open("/run/bs-test-locked", "w").write(str(os.getpid()))
time.sleep(60)'
for _ in $(seq 50); do st_exec test -s /run/bs-test-locked && break; sleep 0.1; done
local_toml ', "bs-test-extra"'
st_tool sh -c 'cd /opt/bs && BS_BACKEND=test BS_REPO=/opt/bs bs-host apply'
assert_eq 1 "$ST_RC" "the item failed"
assert_json_eq 'select(.type == "error") | "\(.kind) \(.target)"' '"dpkg_locked bs-test-extra"' "$ST_JSON" \
    "a dpkg_locked error for the package"
assert_contains "$(jq -r 'select(.type == "error") | .message' <<<"$ST_JSON")" \
    "another process holds the dpkg lock" "the message says what to do"
st_sh 'kill "$(cat /run/bs-test-locked)"'
st_tool sh -c 'cd /opt/bs && BS_BACKEND=test BS_REPO=/opt/bs bs-host apply'
assert_eq 0 "$ST_RC" "once the lock is released the package installs"
assert_eq "install ok installed" "$(st_exec dpkg-query -W -f '${Status}' bs-test-extra)" "bs-test-extra"
local_toml ''

st_step "pam_umask taken out of the stack is drift, and apply puts it back"
st_sh 'DEBIAN_FRONTEND=noninteractive pam-auth-update --package --remove bs-umask'
assert_not_contains "$(st_exec cat /etc/pam.d/common-session)" "pam_umask" "removed by hand"
st_tool sh -c 'cd /opt/bs && BS_BACKEND=test BS_REPO=/opt/bs bs-perms check'
assert_eq 3 "$ST_RC" "check reports the drift"
assert_json_eq 'select(.type == "pam" and .changed) | .target' '"/etc/pam.d/common-session:pam_umask.so"' \
    "$ST_JSON" "what drifted"
st_tool sh -c 'cd /opt/bs && BS_BACKEND=test BS_REPO=/opt/bs bs-perms apply'
assert_eq 0 "$ST_RC" "apply"
assert_eq 0027 "$(st_ssh "$key" test-developer umask)" "SSH sessions have umask 0027 again"

st_step "pwquality = false after it was on: pam_pwquality out of the stack, and it stays out"
st_sh "sed -i 's/^pwquality = true/pwquality = false/' /etc/bs/local.toml"
st_tool sh -c 'cd /opt/bs && BS_BACKEND=test BS_REPO=/opt/bs bs-perms check'
assert_eq 3 "$ST_RC" "check reports the module as drift"
assert_json_eq 'select(.type == "pam" and .changed) | "\(.action) \(.target)"' \
    '"pam_disable /etc/pam.d/common-password:pam_pwquality.so"' "$ST_JSON" "what check reports"
st_tool sh -c 'cd /opt/bs && BS_BACKEND=test BS_REPO=/opt/bs bs-perms apply'
assert_eq 0 "$ST_RC" "apply"
assert_not_contains "$(st_exec cat /etc/pam.d/common-password)" "pam_pwquality" "out of common-password"
assert_failure "our policy drop-in is gone" st_exec test -e /etc/security/pwquality.conf.d/bs.conf
# A package's postinst runs pam-auth-update --package: a disabled profile stays disabled.
st_sh 'DEBIAN_FRONTEND=noninteractive pam-auth-update --package'
assert_not_contains "$(st_exec cat /etc/pam.d/common-password)" "pam_pwquality" \
    "still out after another pam-auth-update run"
assert_success "chpasswd takes a password the policy refused" \
    st_sh 'echo "test-researcher:Sh0rt!pw" | chpasswd'
st_tool sh -c 'cd /opt/bs && BS_BACKEND=test BS_REPO=/opt/bs bs-perms check'
assert_eq 0 "$ST_RC" "no drift with pwquality off"
local_toml ''
st_tool sh -c 'cd /opt/bs && BS_BACKEND=test BS_REPO=/opt/bs bs-perms apply'
assert_eq 0 "$ST_RC" "pwquality on again"
assert_contains "$(st_exec cat /etc/pam.d/common-password)" "pam_pwquality.so" "back in common-password"
assert_failure "chpasswd refuses a weak password again" st_sh 'echo "test-researcher:Sh0rt!pw" | chpasswd'

st_step "holds through upgrades: apt-get upgrade, bs-host upgrade, upgrade --engine"
cp "$v2"/*.deb "$repo/"
index
tar -C "$v2" -c . | st_exec tar -C /srv/apt -x
docker cp "$repo/Packages" "$ST_C:/srv/apt/Packages"
docker cp "$repo/Release" "$ST_C:/srv/apt/Release"
st_sh 'apt-get -q update >/dev/null'
# unattended-upgrades takes only from allowed origins: allow the local repository's.
st_sh 'echo "Unattended-Upgrade::Origins-Pattern { \"origin=bs-test\"; };" >/etc/apt/apt.conf.d/52bs-systest-origin'
uu=$(st_exec unattended-upgrade --dry-run --debug 2>&1)
assert_contains "$uu" "Packages that will be upgraded: bs-test-tool"$'\n' \
    "unattended-upgrades' dry run would upgrade the tool, and only the tool"
assert_contains "$uu" "Initial blacklist: ^bs-test-engine$" "unattended-upgrades reads bs-host's blacklist"
assert_contains "$uu" "pkg bs-test-engine package has been blacklisted" "and leaves the held engine alone"
st_sh 'DEBIAN_FRONTEND=noninteractive apt-get -q upgrade -y >/dev/null'
assert_eq "1.0 2.0" "$(st_exec cat /usr/share/bs-test/bs-test-engine /usr/share/bs-test/bs-test-tool | paste -sd ' ')" \
    "apt-get upgrade upgrades the tool and keeps the held engine"
st_tool sh -c 'cd /opt/bs && BS_BACKEND=test BS_REPO=/opt/bs bs-host upgrade'
assert_eq 0 "$ST_RC" "bs-host upgrade"
assert_json_eq 'select(.type == "upgrade" and .action == "upgrade_engine") | .pending' true "$ST_JSON" \
    "the pending engine upgrade is reported, not made"
assert_eq 1.0 "$(st_exec cat /usr/share/bs-test/bs-test-engine)" "the engine stays at 1.0"
st_step "upgrade --engine is refused while a job container runs"
job=$(docker run -d --pull never --network none --label bs.systest=1 --label "bs.systest.run=$ST_RUN" \
    --label "$job_label" bs-busybox:latest sleep 300)
st_tool sh -c 'cd /opt/bs && BS_BACKEND=test BS_REPO=/opt/bs bs-host upgrade --engine'
assert_eq 1 "$ST_RC" "refused"
assert_json_eq 'select(.type == "error") | .kind' '"jobs_running"' "$ST_JSON" "why"
assert_eq 1.0 "$(st_exec cat /usr/share/bs-test/bs-test-engine)" "the engine stays at 1.0"
docker rm -f "$job" >/dev/null
st_tool sh -c 'cd /opt/bs && BS_BACKEND=test BS_REPO=/opt/bs bs-host upgrade --engine'
assert_eq 0 "$ST_RC" "upgrade --engine with no job running"
assert_eq 2.0 "$(st_exec cat /usr/share/bs-test/bs-test-engine)" "the engine is upgraded"
assert_eq bs-test-engine "$(st_exec apt-mark showhold)" "and still held"
