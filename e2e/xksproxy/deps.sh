#!/bin/sh
# Installs what the xks-proxy end-to-end tests need, when absent: SoftHSM2 (the
# PKCS#11 token), OpenSC's pkcs11-tool (key provisioning) and curl (the independent
# SigV4 client, with openssl for its CDIV check). Debian/Ubuntu; needs root or sudo. Safe to run repeatedly.
set -eu
missing=""
[ -e /usr/lib/softhsm/libsofthsm2.so ] && command -v softhsm2-util >/dev/null 2>&1 || missing="$missing softhsm2"
command -v pkcs11-tool >/dev/null 2>&1 || missing="$missing opensc"
command -v curl >/dev/null 2>&1 || missing="$missing curl"
command -v openssl >/dev/null 2>&1 || missing="$missing openssl"
if [ -z "$missing" ]; then
	echo "xksproxy deps: softhsm2, opensc and curl present"
	exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "xksproxy deps: installing$missing"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing
