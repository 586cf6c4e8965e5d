#!/bin/bash
# `npm run package`: build the .deb (dpkg-buildpackage -b over debian/) and the .rpm (rpmbuild -bb
# rpm/mtaproxy.spec) into dist/packages/. Needs `npm ci` done, and on Debian:
#   apt-get install debhelper rpm   (debhelper 13 provides dh-sequence-installsysusers)
# The version is package.json's, in one place: debian/changelog is generated here, and the spec
# gets it with --define. The build runs in a copy of the checkout (dist/.pkgbuild/), because
# dpkg-buildpackage writes next to the source tree and rpmbuild is run in place there.
#   ONLY=deb|rpm  builds one of the two.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
VERSION=$(node -p 'require("./package.json").version')
NAME=mtaproxy
OUT=$ROOT/dist/packages
WORK=$ROOT/dist/.pkgbuild
SRC=$WORK/$NAME-$VERSION
[ -d node_modules/esbuild ] || { echo "build-packages: run \"npm ci\" first (esbuild and the native addons come from node_modules)" >&2; exit 1; }
for tool in dpkg-buildpackage dh rpmbuild; do
  command -v "$tool" >/dev/null || { echo "build-packages: $tool missing (apt-get install debhelper rpm)" >&2; exit 1; }
done

# The source: the files git knows (committed or not, minus ignored ones), node_modules linked.
rm -rf "$WORK" && mkdir -p "$SRC" "$OUT"
git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' f; do [ -e "$f" ] || [ -L "$f" ] && printf '%s\0' "$f"; done \
  | tar --null -T - -cf - | tar -xf - -C "$SRC"
ln -s "$ROOT/node_modules" "$SRC/node_modules"

# Reproducible dates: the last commit's (or now, outside git).
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}
MAINTAINER=$(sed -n 's/^Maintainer: //p' debian/control)
cat > "$SRC/debian/changelog" <<EOF
$NAME ($VERSION) unstable; urgency=medium

  * Release $VERSION (generated from package.json by packaging/build-packages.sh).

 -- $MAINTAINER  $(date -R -u -d "@$SOURCE_DATE_EPOCH")
EOF

if [ "${ONLY:-deb}" = deb ] || [ -z "${ONLY:-}" ]; then
  echo "== dpkg-buildpackage -b ($NAME $VERSION)"
  rm -f "$OUT"/${NAME}_*.deb
  (cd "$SRC" && dpkg-buildpackage -b -us -uc)
  cp "$WORK"/${NAME}_"${VERSION}"_*.deb "$OUT"/
fi

if [ "${ONLY:-rpm}" = rpm ] || [ -z "${ONLY:-}" ]; then
  echo "== rpmbuild -bb rpm/mtaproxy.spec ($NAME $VERSION)"
  rm -f "$OUT"/${NAME}-*.rpm
  # --nodeps: on Debian the rpm database is empty, so BuildRequires cannot be checked.
  (cd "$SRC" && rpmbuild -bb --build-in-place --nodeps \
    --define "_topdir $WORK/rpmbuild" \
    --define "mtaproxy_version $VERSION" \
    --define "mtaproxy_changelog_date $(date -u -d "@$SOURCE_DATE_EPOCH" '+%a %b %d %Y')" \
    --define "source_date_epoch_from_changelog 0" \
    rpm/$NAME.spec)
  cp "$WORK"/rpmbuild/RPMS/*/${NAME}-"${VERSION}"-*.rpm "$OUT"/
fi
ls -l "$OUT"
