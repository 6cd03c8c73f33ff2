# Sourced by bin/run and bin/test: make .venv match requirements.txt.
# Silent when .venv is ready; otherwise it says what it is doing, since building
# it takes half a minute (these lines then come before the service's own).
venv_ready() {
    local stamp=".venv/.requirements.sha256" want me="bin/${0##*/}"
    want=$(sha256sum requirements.txt | cut -d' ' -f1)
    if [ -x .venv/bin/python ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
        return 0
    fi
    echo "$me: installing requirements.txt into .venv (first use, about 30 s)..."
    if ! python3 -m venv .venv >/dev/null 2>&1; then
        # Debian's python3 ships venv separately.
        apt-get install -y -qq python3-venv >/dev/null && python3 -m venv .venv
    fi
    if ! .venv/bin/pip install -q --disable-pip-version-check -r requirements.txt \
            >.venv/install.log 2>&1; then
        cat .venv/install.log >&2
        echo "bin: installing requirements.txt failed (log above)" >&2
        return 1
    fi
    echo "$want" >"$stamp"
    echo "$me: .venv is ready"
}
