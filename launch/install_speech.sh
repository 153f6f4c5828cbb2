#!/usr/bin/env bash
# The Debian / Ubuntu packages behind the built-in speech (vqlab_speech): espeak-ng
# synthesizes the training speech; pocketsphinx-testdata and alsa-utils hold the real
# recordings it is evaluated on. Installs only what is missing (root, or sudo).
set -euo pipefail
if command -v espeak-ng >/dev/null && [ -d /usr/share/pocketsphinx/test/data ] \
    && [ -d /usr/share/sounds/alsa ]; then
  exit 0
fi
SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq espeak-ng pocketsphinx-testdata \
  alsa-utils >/dev/null
