#!/bin/sh
# netlab FAKE k3s installer (served by the lab's download mirror; behaves like get.k3s.io where calicolab
# depends on it). The mirror URL is baked in when the mirror is built: @@MIRROR@@
#
# Honours: INSTALL_K3S_VERSION (required here: the lab has no release channel), INSTALL_K3S_EXEC (or arguments;
# "server"/"agent" first word selects the command), K3S_URL (=> agent; needs K3S_TOKEN or K3S_TOKEN_FILE; https
# only), K3S_* (into the unit's env file), INSTALL_K3S_SKIP_DOWNLOAD, INSTALL_K3S_SKIP_START,
# INSTALL_K3S_SKIP_ENABLE, INSTALL_K3S_NAME, INSTALL_K3S_BIN_DIR, INSTALL_K3S_SYMLINK.
set -e

MIRROR="@@MIRROR@@"

info() { echo '[INFO] ' "$@"; }
warn() { echo '[WARN] ' "$@" >&2; }
fatal() { echo '[ERROR] ' "$@" >&2; exit 1; }

quote() {
    for arg in "$@"; do
        printf '%s\n' "$arg" | sed "s/'/'\\\\''/g;1s/^/'/;\$s/\$/'/"
    done
}
quote_indent() {
    printf ' \\\n'
    for arg in "$@"; do
        printf '\t%s \\\n' "$(quote "$arg")"
    done
}
escape_dq() { printf '%s' "$@" | sed -e 's/"/\\"/g'; }

SUDO=sudo
if [ "$(id -u)" -eq 0 ]; then SUDO=; fi

# --- setup_env ---------------------------------------------------------------------------------------------
if [ -z "${K3S_URL}" ]; then CMD_K3S=server; else CMD_K3S=agent; fi
# shellcheck disable=SC2086
set -- ${INSTALL_K3S_EXEC} "$@"
case "$1" in
    server|agent) CMD_K3S="$1"; shift ;;
esac
if [ -n "${K3S_URL}" ] && [ "${CMD_K3S}" = agent ]; then
    if [ -z "${K3S_TOKEN}" ] && [ -z "${K3S_TOKEN_FILE}" ]; then
        fatal "Defaulted k3s exec command to '${CMD_K3S}' because K3S_URL is defined, but K3S_TOKEN, K3S_TOKEN_FILE or K3S_CLUSTER_SECRET is not defined."
    fi
    case "${K3S_URL}" in
        https://*) ;;
        *) fatal "Only https:// URLs are supported for K3S_URL (have ${K3S_URL})" ;;
    esac
fi
if [ -n "${INSTALL_K3S_NAME}" ]; then
    SYSTEM_NAME="k3s-${INSTALL_K3S_NAME}"
elif [ "${CMD_K3S}" = server ]; then
    SYSTEM_NAME=k3s
else
    SYSTEM_NAME=k3s-${CMD_K3S}
fi
BIN_DIR=${INSTALL_K3S_BIN_DIR:-/usr/local/bin}
SYSTEMD_DIR=/etc/systemd/system
SERVICE_K3S=${SYSTEM_NAME}.service
FILE_K3S_SERVICE=${SYSTEMD_DIR}/${SERVICE_K3S}
FILE_K3S_ENV=${SYSTEMD_DIR}/${SERVICE_K3S}.env
KILLALL_K3S_SH=${BIN_DIR}/k3s-killall.sh
UNINSTALL_K3S_SH=${BIN_DIR}/${SYSTEM_NAME}-uninstall.sh
if [ "${CMD_K3S}" = server ]; then SYSTEMD_TYPE=notify; else SYSTEMD_TYPE=exec; fi

# --- version -----------------------------------------------------------------------------------------------
if [ -z "${INSTALL_K3S_VERSION}" ] && [ -z "${INSTALL_K3S_SKIP_DOWNLOAD}" ]; then
    fatal "netlab fake installer: INSTALL_K3S_VERSION is required (no release channel in the lab)"
fi
VERSION_K3S="${INSTALL_K3S_VERSION}"

# --- download ----------------------------------------------------------------------------------------------
if [ "${INSTALL_K3S_SKIP_DOWNLOAD}" != true ]; then
    command -v curl >/dev/null 2>&1 || fatal "Can not find curl or wget for downloading files"
    TMP_DIR=$(mktemp -d -t k3s-install.XXXXXXXXXX)
    trap 'rm -rf "${TMP_DIR}"' EXIT
    info "Using ${VERSION_K3S} as release"
    info "Downloading hash ${MIRROR}/k3s/${VERSION_K3S}/sha256sum-amd64.txt"
    curl -sfL -o "${TMP_DIR}/k3s.hash" "${MIRROR}/k3s/${VERSION_K3S}/sha256sum-amd64.txt" || fatal 'Download failed'
    HASH_EXPECTED=$(grep " k3s$" "${TMP_DIR}/k3s.hash" | awk '{print $1}')
    info "Downloading binary ${MIRROR}/k3s/${VERSION_K3S}/k3s"
    curl -sfL -o "${TMP_DIR}/k3s.bin" "${MIRROR}/k3s/${VERSION_K3S}/k3s" || fatal 'Download failed'
    info "Verifying binary download"
    HASH_BIN=$(sha256sum "${TMP_DIR}/k3s.bin" | awk '{print $1}')
    if [ "${HASH_EXPECTED}" != "${HASH_BIN}" ]; then
        fatal "Download sha256 does not match ${HASH_EXPECTED}, got ${HASH_BIN}"
    fi
    info "Installing k3s to ${BIN_DIR}/k3s"
    chmod 755 "${TMP_DIR}/k3s.bin"
    $SUDO mkdir -p "${BIN_DIR}"
    $SUDO chown root:root "${TMP_DIR}/k3s.bin"
    $SUDO mv -f "${TMP_DIR}/k3s.bin" "${BIN_DIR}/k3s"
else
    info 'Skipping k3s download and verify'
fi

# --- symlinks (only if the command does not exist in PATH) -------------------------------------------------
for cmd in kubectl crictl ctr; do
    if [ ! -e "${BIN_DIR}/${cmd}" ] || [ "${INSTALL_K3S_SYMLINK}" = force ]; then
        which_cmd=$(command -v "${cmd}" 2>/dev/null || true)
        if [ -z "${which_cmd}" ] || [ "${INSTALL_K3S_SYMLINK}" = force ]; then
            info "Creating ${BIN_DIR}/${cmd} symlink to k3s"
            $SUDO ln -sf k3s "${BIN_DIR}/${cmd}"
        else
            info "Skipping ${BIN_DIR}/${cmd} symlink to k3s, command exists in PATH at ${which_cmd}"
        fi
    else
        info "Skipping ${BIN_DIR}/${cmd} symlink to k3s, already exists"
    fi
done

# --- killall / uninstall -----------------------------------------------------------------------------------
info "Creating killall script ${KILLALL_K3S_SH}"
$SUDO tee "${KILLALL_K3S_SH}" >/dev/null <<'EOF'
#!/bin/sh
[ $(id -u) -eq 0 ] || exec sudo $0 $@
for service in /etc/systemd/system/k3s*.service; do
    [ -s $service ] && systemctl stop $(basename $service)
done
EOF
$SUDO chmod 755 "${KILLALL_K3S_SH}"
info "Creating uninstall script ${UNINSTALL_K3S_SH}"
$SUDO tee "${UNINSTALL_K3S_SH}" >/dev/null <<EOF
#!/bin/sh
set -x
[ \$(id -u) -eq 0 ] || exec sudo \$0 \$@
${KILLALL_K3S_SH}
systemctl disable ${SYSTEM_NAME}
systemctl reset-failed ${SYSTEM_NAME}
systemctl daemon-reload
rm -f ${FILE_K3S_SERVICE} ${FILE_K3S_ENV}
for cmd in kubectl crictl ctr; do
    if [ -L ${BIN_DIR}/\$cmd ]; then rm -f ${BIN_DIR}/\$cmd; fi
done
rm -rf /etc/rancher/k3s /run/k3s /var/lib/rancher/k3s
rm -f ${BIN_DIR}/k3s ${KILLALL_K3S_SH}
rm -f ${UNINSTALL_K3S_SH}
EOF
$SUDO chmod 755 "${UNINSTALL_K3S_SH}"

# --- env file + unit ---------------------------------------------------------------------------------------
info "env: Creating environment file ${FILE_K3S_ENV}"
$SUDO touch "${FILE_K3S_ENV}"
$SUDO chmod 0600 "${FILE_K3S_ENV}"
env | grep '^K3S_' | $SUDO tee "${FILE_K3S_ENV}" >/dev/null || true

info "systemd: Creating service file ${FILE_K3S_SERVICE}"
$SUDO tee "${FILE_K3S_SERVICE}" >/dev/null <<EOF
[Unit]
Description=Lightweight Kubernetes
Documentation=https://k3s.io
Wants=network-online.target
After=network-online.target

[Install]
WantedBy=multi-user.target

[Service]
Type=${SYSTEMD_TYPE}
EnvironmentFile=-/etc/default/%N
EnvironmentFile=-/etc/sysconfig/%N
EnvironmentFile=-${FILE_K3S_ENV}
KillMode=process
Delegate=yes
LimitNOFILE=1048576
TimeoutStartSec=0
Restart=always
RestartSec=5s
ExecStartPre=-/sbin/modprobe br_netfilter
ExecStartPre=-/sbin/modprobe overlay
ExecStart=${BIN_DIR}/k3s \\
    ${CMD_K3S}$(quote_indent "$@")

EOF

if [ "${INSTALL_K3S_SKIP_ENABLE}" = true ]; then
    exit 0
fi
info "systemd: Enabling ${SYSTEM_NAME} unit"
$SUDO systemctl enable "${FILE_K3S_SERVICE}" >/dev/null 2>&1 || $SUDO systemctl enable "${SYSTEM_NAME}"
$SUDO systemctl daemon-reload >/dev/null
if [ "${INSTALL_K3S_SKIP_START}" = true ]; then
    exit 0
fi
info "systemd: Starting ${SYSTEM_NAME}"
$SUDO systemctl restart "${SYSTEM_NAME}"
