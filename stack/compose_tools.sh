# stack/compose_tools.sh -- the two Compose CLIs that tests/test_docker_compose.py validates
# docker-compose.yml with (`config` needs no Docker engine). Sourced by stack/setup.sh,
# which calls ensure_compose_tools; idempotent, nothing is installed system-wide:
#   .stack/compose/v2/docker-compose  Compose v2 from Debian trixie's `docker-compose`
#       package (a Go binary needing libc6 >= 2.34: Debian 12 and 13). Debian 12 has no v2
#       package, and Debian 13's has the same name as Debian 12's 1.29, so the .deb is
#       downloaded with apt through a temporary source list (the mirror is this machine's,
#       as for the TimescaleDB source) and only unpacked here.
#   .stack/compose/v1/                docker-compose 1.29.2 from PyPI, in a venv of its own
#       (it pins PyYAML<6, whose 5.4.1 has no wheel for Python >= 3.10 and whose sdist
#       fails to build with Cython 3: Cython<3 goes in first and the build is not
#       isolated; setuptools also brings the distutils it imports on Python >= 3.12).
# shellcheck shell=bash

COMPOSE_DIR="$STACK_DIR/compose"
COMPOSE_V2_SUITE=trixie
COMPOSE_V1_VERSION=1.29.2

ensure_compose_v2() {
    local bin="$COMPOSE_DIR/v2/docker-compose" work="$BUILD_DIR/compose-v2" uri deb
    [[ -x $bin ]] && "$bin" version >/dev/null 2>&1 && return 0
    uri=$(debian_archive_uri)
    rm -rf "$work"
    mkdir -p "$work/lists/partial" "$work/deb" "$COMPOSE_DIR/v2"
    printf 'deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] %s %s main\n' \
        "$uri" "$COMPOSE_V2_SUITE" >"$work/sources.list"
    local apt_opts=(-o "Dir::Etc::sourcelist=$work/sources.list" -o Dir::Etc::sourceparts=/nonexistent
                    -o "Dir::State::Lists=$work/lists" -o Dir::Cache::pkgcache= -o Dir::Cache::srcpkgcache=
                    -o APT::Sandbox::User=root)
    local clog="$LOG_DIR/compose-v2.log"
    log "fetching Compose v2 (Debian $COMPOSE_V2_SUITE's docker-compose package; log: $clog)"
    {
        apt-get "${apt_opts[@]}" -q update &&
        (cd "$work/deb" && apt-get "${apt_opts[@]}" -q download docker-compose)
    } >"$clog" 2>&1 || { show_log "$clog"; die "could not download Debian's docker-compose package"; }
    deb=$(compgen -G "$work/deb/docker-compose_2.*.deb" | head -n1 || true)
    [[ -n $deb ]] || { show_log "$clog"; die "Debian $COMPOSE_V2_SUITE's docker-compose is not Compose v2"; }
    dpkg-deb -x "$deb" "$work/root"
    install -m 755 "$work/root/usr/libexec/docker/cli-plugins/docker-compose" "$bin"
    rm -rf "$work"
    "$bin" version >/dev/null || die "$bin does not run here"
}

ensure_compose_v1() {
    local venv="$COMPOSE_DIR/v1" clog="$LOG_DIR/compose-v1.log" have=""
    [[ -x $venv/bin/docker-compose ]] && have=$("$venv/bin/docker-compose" version 2>/dev/null || true)
    [[ $have == *"version $COMPOSE_V1_VERSION,"* ]] && return 0
    log "installing docker-compose $COMPOSE_V1_VERSION from PyPI into $venv (log: $clog)"
    rm -rf "$venv"
    {
        "$VENV_PY" -m venv "$venv" &&
        "$venv/bin/pip" install -q --disable-pip-version-check 'cython<3' wheel setuptools &&
        "$venv/bin/pip" install -q --disable-pip-version-check --no-build-isolation \
            "docker-compose==$COMPOSE_V1_VERSION"
    } >"$clog" 2>&1 || { show_log "$clog" 40; rm -rf "$venv"; die "docker-compose $COMPOSE_V1_VERSION install failed"; }
}

ensure_compose_tools() {
    mkdir -p "$COMPOSE_DIR"
    ensure_compose_v2
    ensure_compose_v1
}
