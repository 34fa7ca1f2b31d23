#!/usr/bin/env bash
# Installs, starts and stops the local AWS API emulators that esm's tests, demo
# and benchmarks talk to. Everything listens on 127.0.0.1 only.
#
#   scripts/emulators.sh install        install kinesis-local (npm) if missing
#   scripts/emulators.sh install-moto   install moto[server] (PyPI) into a venv
#   scripts/emulators.sh install-python install awslambdaric (PyPI) into a venv
#   scripts/emulators.sh start          install if needed, start kinesis-local
#   scripts/emulators.sh stop           stop what `start` started
#   scripts/emulators.sh status         exit 0 if the Kinesis port accepts connections
#   scripts/emulators.sh env            print `export` lines for the AWS SDK:
#                                         eval "$(scripts/emulators.sh env)"
#
# Settings (environment):
#   ESM_EMULATORS_DIR      where emulators, logs and pid files live
#                          (default: $HOME/.cache/esm-emulators)
#   ESM_KINESIS_PORT       plain HTTP port of kinesis-local (default: 4567)
#   ESM_KINESIS_TLS_PORT   TLS/HTTP2 port of kinesis-local (default: 4568)
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
EMULATORS_DIR="${ESM_EMULATORS_DIR:-$HOME/.cache/esm-emulators}"
KINESIS_PORT="${ESM_KINESIS_PORT:-4567}"
KINESIS_TLS_PORT="${ESM_KINESIS_TLS_PORT:-4568}"

KINESIS_VERSION="0.6.2"
KINESIS_PREFIX="$EMULATORS_DIR/kinesis"
KINESIS_PKG="$KINESIS_PREFIX/node_modules/kinesis-local"
KINESIS_LOG="$EMULATORS_DIR/kinesis.log"
KINESIS_PID="$EMULATORS_DIR/kinesis.pid"
# kinesis-local binds 0.0.0.0 (all interfaces) and has no setting for the
# host; this preload makes it listen on 127.0.0.1 instead (see the file).
KINESIS_LOOPBACK_PRELOAD="$SCRIPT_DIR/kinesis-loopback.cjs"
MOTO_VENV="$EMULATORS_DIR/moto-venv"
# Python with AWS's Lambda runtime interface client, for the Runtime API tests.
PYTHON_VENV="$EMULATORS_DIR/python-venv"
AWSLAMBDARIC_VERSION="4.2.2"

log() { printf 'emulators: %s\n' "$*" >&2; }
die() {
	log "error: $*"
	exit 1
}

# True if something accepts TCP connections on 127.0.0.1:$1.
port_open() {
	(exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

kinesis_installed() {
	[[ -f "$KINESIS_PKG/main.js" && -f "$KINESIS_PKG/server.json" && -f "$KINESIS_PKG/package.json" ]] &&
		grep -Eq "\"version\"[[:space:]]*:[[:space:]]*\"$KINESIS_VERSION\"" "$KINESIS_PKG/package.json"
}

cmd_install() {
	if kinesis_installed; then
		return 0
	fi
	command -v node >/dev/null 2>&1 || die "node is not installed (apt-get install -y nodejs npm)"
	command -v npm >/dev/null 2>&1 || die "npm is not installed (apt-get install -y nodejs npm)"
	log "installing kinesis-local@$KINESIS_VERSION into $KINESIS_PREFIX"
	mkdir -p "$KINESIS_PREFIX"
	npm install --prefix "$KINESIS_PREFIX" --no-audit --no-fund --loglevel=error \
		"kinesis-local@$KINESIS_VERSION" >&2
	kinesis_installed || die "kinesis-local@$KINESIS_VERSION is not in $KINESIS_PKG after npm install"
}

cmd_install_python() {
	if [[ -x "$PYTHON_VENV/bin/python" ]] && "$PYTHON_VENV/bin/python" -c 'import awslambdaric' 2>/dev/null; then
		return 0
	fi
	command -v python3 >/dev/null 2>&1 || die "python3 is not installed"
	log "installing awslambdaric==$AWSLAMBDARIC_VERSION into $PYTHON_VENV"
	mkdir -p "$EMULATORS_DIR"
	python3 -m venv "$PYTHON_VENV"
	"$PYTHON_VENV/bin/pip" install --quiet --disable-pip-version-check "awslambdaric==$AWSLAMBDARIC_VERSION" >&2
	"$PYTHON_VENV/bin/python" -c 'import awslambdaric' || die "awslambdaric does not import after install"
}

cmd_install_moto() {
	if [[ -x "$MOTO_VENV/bin/python" ]] && "$MOTO_VENV/bin/python" -c 'import moto.server' 2>/dev/null; then
		return 0
	fi
	command -v python3 >/dev/null 2>&1 || die "python3 is not installed"
	log "installing moto[server] into $MOTO_VENV"
	mkdir -p "$EMULATORS_DIR"
	python3 -m venv "$MOTO_VENV"
	"$MOTO_VENV/bin/pip" install --quiet --disable-pip-version-check 'moto[server]' >&2
	"$MOTO_VENV/bin/python" -c 'import moto.server' || die "moto[server] does not import after install"
}

# The pid in the pid file, if that process is still a running kinesis-local.
running_pid() {
	[[ -f "$KINESIS_PID" ]] || return 1
	local pid
	pid="$(cat "$KINESIS_PID" 2>/dev/null || true)"
	[[ "$pid" =~ ^[0-9]+$ ]] || return 1
	kill -0 "$pid" 2>/dev/null || return 1
	# Guard against a recycled pid: the process must be our node main.js.
	tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q 'main.js' || return 1
	printf '%s\n' "$pid"
}

cmd_start() {
	local pid
	if port_open "$KINESIS_PORT"; then
		if pid="$(running_pid)"; then
			log "kinesis-local already running on 127.0.0.1:$KINESIS_PORT (pid $pid)"
		else
			log "something already listens on 127.0.0.1:$KINESIS_PORT; reusing it as the Kinesis emulator"
		fi
		return 0
	fi
	cmd_install
	mkdir -p "$EMULATORS_DIR"
	rm -f "$KINESIS_PID"
	log "starting kinesis-local on 127.0.0.1:$KINESIS_PORT (TLS 127.0.0.1:$KINESIS_TLS_PORT), log $KINESIS_LOG"
	# From inside the package folder: kinesis-local reads server.json (its TLS
	# certificate) from the working directory. setsid puts it in a session of
	# its own, so a Ctrl-C in the terminal that started it does not kill it
	# under a still-running esm; `stop` (or a caller's trap) ends it.
	(
		cd "$KINESIS_PKG"
		exec env \
			KINESIS_MOCK_PLAIN_PORT="$KINESIS_PORT" \
			KINESIS_MOCK_TLS_PORT="$KINESIS_TLS_PORT" \
			CREATE_STREAM_DURATION=0ms \
			DELETE_STREAM_DURATION=0ms \
			REGISTER_STREAM_CONSUMER_DURATION=0ms \
			UPDATE_SHARD_COUNT_DURATION=200ms \
			SPLIT_SHARD_DURATION=200ms \
			MERGE_SHARDS_DURATION=200ms \
			SHARD_LIMIT=1000 \
			LOG_LEVEL=WARN \
			setsid node --require "$KINESIS_LOOPBACK_PRELOAD" main.js
	) </dev/null >"$KINESIS_LOG" 2>&1 &
	pid=$!
	printf '%s\n' "$pid" >"$KINESIS_PID"

	local i
	for ((i = 0; i < 300; i++)); do
		if port_open "$KINESIS_PORT"; then
			log "kinesis-local is up (pid $pid)"
			return 0
		fi
		if ! kill -0 "$pid" 2>/dev/null; then
			rm -f "$KINESIS_PID"
			tail -n 20 "$KINESIS_LOG" >&2 || true
			die "kinesis-local exited before listening on 127.0.0.1:$KINESIS_PORT (log above)"
		fi
		sleep 0.1
	done
	tail -n 20 "$KINESIS_LOG" >&2 || true
	kill "$pid" 2>/dev/null || true
	rm -f "$KINESIS_PID"
	die "kinesis-local did not listen on 127.0.0.1:$KINESIS_PORT within 30 s"
}

cmd_stop() {
	local pid i
	if pid="$(running_pid)"; then
		kill -TERM "$pid" 2>/dev/null || true
		for ((i = 0; i < 50; i++)); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.1
		done
		if kill -0 "$pid" 2>/dev/null; then
			kill -KILL "$pid" 2>/dev/null || true
		fi
		log "stopped kinesis-local (pid $pid)"
	fi
	rm -f "$KINESIS_PID"
}

cmd_status() {
	if port_open "$KINESIS_PORT"; then
		log "Kinesis emulator listening on 127.0.0.1:$KINESIS_PORT"
		return 0
	fi
	log "nothing listens on 127.0.0.1:$KINESIS_PORT"
	return 1
}

cmd_env() {
	cat <<EOF
export AWS_ENDPOINT_URL_KINESIS=http://127.0.0.1:$KINESIS_PORT
export AWS_ACCESS_KEY_ID=test
export AWS_SECRET_ACCESS_KEY=test
export AWS_REGION=us-east-1
export ESM_TEST_PYTHON=$PYTHON_VENV/bin/python
EOF
}

usage() {
	sed -n '2,18p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
}

case "${1:-}" in
install) cmd_install ;;
install-moto) cmd_install_moto ;;
install-python) cmd_install_python ;;
start) cmd_start ;;
stop) cmd_stop ;;
status) cmd_status ;;
env) cmd_env ;;
-h | --help | help)
	usage
	;;
*)
	usage
	exit 2
	;;
esac
