# Sourced by bin/run and bin/test: make .venv match requirements.txt.
# Quiet on success (bin/run's first line of output belongs to the service).
venv_ready() {
    local stamp=".venv/.requirements.sha256" want
    want=$(sha256sum requirements.txt | cut -d' ' -f1)
    if [ -x .venv/bin/python ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
        return 0
    fi
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
}
