#!/usr/bin/env node
// Builds the installed application tree that both packages ship as /usr/lib/mtaproxy:
//
//   STAGEDIR/mtaproxy/node                         the Node.js runtime this build ran on (a private copy:
//                                                  stock Debian 12 ships Node 18; see README, "Why a private runtime")
//   STAGEDIR/mtaproxy/package.json                 name + version (dist/cli/main.js reads ../../package.json)
//   STAGEDIR/mtaproxy/dist/cli/main.js             the whole program, bundled by esbuild (one file)
//   STAGEDIR/mtaproxy/node_modules/sd-notify/      native addons, compiled here with node-gyp against
//   STAGEDIR/mtaproxy/node_modules/systemd-journald/   this machine's Node headers and libsystemd,
//   STAGEDIR/mtaproxy/node_modules/bindings/ …     plus their runtime dependencies
//
// Usage: node packaging/stage.mjs [STAGEDIR]   (default dist/.stage; run from anywhere)
// Called by debian/rules and rpm/mtaproxy.spec; needs `npm ci` done (esbuild, the addons' sources).
// Honors CFLAGS/CXXFLAGS/CPPFLAGS/LDFLAGS (the distributions' hardening flags) for the addons.
import { execFileSync } from 'node:child_process';
import { chmodSync, cpSync, existsSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const STAGE = resolve(process.argv[2] ?? join(ROOT, 'dist/.stage'));
const APP = join(STAGE, 'mtaproxy');
/** Loaded at run time with createRequire (src/systemd/notify.ts, journal.ts): not bundled. */
const NATIVE = ['sd-notify', 'systemd-journald'];
/** Needed to compile an addon, not to run it. */
const BUILD_ONLY = new Set(['nan', 'node-addon-api']);

const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8'));
const log = (msg) => process.stderr.write(`stage: ${msg}\n`);

rmSync(APP, { recursive: true, force: true });
mkdirSync(join(APP, 'dist/cli'), { recursive: true });

// 1. The version, where dist/cli/main.js looks for it; "type": "module" for the ESM bundle.
writeFileSync(
  join(APP, 'package.json'),
  `${JSON.stringify({ name: pkg.name, version: pkg.version, description: pkg.description, license: pkg.license, private: true, type: 'module' }, null, 2)}\n`,
);

// 2. The runtime: the very binary whose headers the addons are compiled against below (their
// V8 ABI, NODE_MODULE_VERSION, must match it), and its license for the package's copyright notes.
const RUNTIME = join(APP, 'node');
// Debian's and Fedora's own nodejs packages are a small launcher linked to the system's
// libnode.so: a copy of that would not be a private runtime at all. Build with a self-contained
// node (NodeSource's, or the official binaries).
const linked = execFileSync('ldd', [process.execPath], { encoding: 'utf8' });
if (/libnode\.so/.test(linked)) throw new Error(`${process.execPath} is linked to libnode.so (a distribution's nodejs): build the packages with a self-contained Node.js 20 (NodeSource, nodejs.org)`);
cpSync(process.execPath, RUNTIME);
const nodeLicense = [join(resolve(process.execPath, '../..'), 'share/doc/nodejs/LICENSE'), '/usr/share/doc/nodejs/copyright'].find((f) => existsSync(f));
if (nodeLicense === undefined) throw new Error('the Node.js license (share/doc/nodejs/LICENSE) was not found next to the runtime');
cpSync(nodeLicense, join(STAGE, 'nodejs-LICENSE'));
log(`runtime ${process.execPath} (Node ${process.version}) -> ${RUNTIME}`);

// 3. One ESM file. Bundled CommonJS (pino …) calls require() for Node built-ins, which an ESM
// file does not have: the banner provides one. The shebang names the private runtime.
const require = createRequire(join(ROOT, 'package.json'));
const esbuild = require('esbuild');
const out = join(APP, 'dist/cli/main.js');
await esbuild.build({
  entryPoints: [join(ROOT, 'src/cli/main.ts')],
  outfile: out,
  bundle: true,
  platform: 'node',
  target: 'node20',
  format: 'esm',
  external: NATIVE,
  legalComments: 'none',
  logLevel: 'warning',
  banner: { js: "import { createRequire as __mtaproxyCreateRequire } from 'node:module';\nconst require = __mtaproxyCreateRequire(import.meta.url);" },
});
const bundled = readFileSync(out, 'utf8').replace(/^#!.*\n/, '');
writeFileSync(out, `#!/usr/lib/mtaproxy/node\n// mtaproxy ${pkg.version}: bundled from src/ by packaging/stage.mjs (licenses: /usr/share/doc/mtaproxy/copyright)\n${bundled}`);
chmodSync(out, 0o755);
log(`bundled ${out} (${Math.round(statSync(out).size / 1024)} KiB)`);

// 4. The native addons and what they require at run time, from node_modules (npm ci).
const modules = new Set();
const visit = (name) => {
  if (modules.has(name)) return;
  const dir = join(ROOT, 'node_modules', name);
  if (!existsSync(join(dir, 'package.json'))) throw new Error(`node_modules/${name} is missing: run "npm ci" first`);
  modules.add(name);
  const meta = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8'));
  for (const dep of Object.keys(meta.dependencies ?? {})) visit(dep);
};
NATIVE.forEach(visit);
const SKIP = /^(build|test|tests|examples?|\.github|\.travis\.yml|\.npmignore|\.jshintrc|History\.md|README(\.md)?|CHANGELOG(\.md)?|index\.d\.ts)$/i;
for (const name of modules) {
  cpSync(join(ROOT, 'node_modules', name), join(APP, 'node_modules', name), {
    recursive: true,
    filter: (src) => !SKIP.test(src.split('/').pop() ?? ''),
  });
}

// 5. Compile the addons for this machine (node-gyp, against the installed Node's own headers: no
// download). The result is what the package ships; build leftovers are removed.
const nodedir = process.env.npm_config_nodedir ?? resolve(process.execPath, '../..');
if (!existsSync(join(nodedir, 'include/node/node_version.h'))) throw new Error(`no Node headers under ${nodedir}/include/node`);
const nodeGyp = findNodeGyp();
for (const name of modules) {
  const dir = join(APP, 'node_modules', name);
  if (!existsSync(join(dir, 'binding.gyp'))) continue;
  log(`compiling ${name} (node-gyp, nodedir ${nodedir})`);
  execFileSync(process.execPath, [nodeGyp, 'rebuild', `--nodedir=${nodedir}`, '--release', '--loglevel=warn'], {
    cwd: dir,
    stdio: ['ignore', 'ignore', 'inherit'],
    env: { ...process.env, NODE_PATH: join(APP, 'node_modules') },
  });
  for (const entry of readdirSync(join(dir, 'build'))) {
    if (entry !== 'Release') rmSync(join(dir, 'build', entry), { recursive: true, force: true });
  }
  for (const entry of readdirSync(join(dir, 'build/Release'))) {
    if (!entry.endsWith('.node')) rmSync(join(dir, 'build/Release', entry), { recursive: true, force: true });
  }
  for (const entry of readdirSync(dir)) {
    if (entry === 'binding.gyp' || entry.endsWith('.cc') || entry === 'src') rmSync(join(dir, entry), { recursive: true, force: true });
  }
}
for (const name of BUILD_ONLY) rmSync(join(APP, 'node_modules', name), { recursive: true, force: true });
// Plain files: 0644 (index.js of systemd-journald is 0755 without a shebang); the entry point: 0755.
const normalize = (dir) => {
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) {
      chmodSync(path, 0o755);
      normalize(path);
    } else {
      chmodSync(path, path === out || path === RUNTIME ? 0o755 : 0o644);
    }
  }
};
normalize(APP);

// 6. Smoke test of the staged tree, with its own runtime: the version comes out, and both addons load.
const version = execFileSync(RUNTIME, [out, '--version'], { encoding: 'utf8' }).trim();
if (version !== pkg.version) throw new Error(`staged mtaproxy --version printed "${version}", expected ${pkg.version}`);
execFileSync(RUNTIME, ['-e', NATIVE.map((name) => `require(${JSON.stringify(join(APP, 'node_modules', name))});`).join('')], { stdio: 'inherit' });
log(`staged ${APP}: mtaproxy ${version}, addons ${NATIVE.join(', ')} load`);

function findNodeGyp() {
  const candidates = [
    process.env.npm_config_node_gyp,
    (() => {
      try {
        return join(execFileSync('npm', ['root', '-g'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim(), 'npm/node_modules/node-gyp/bin/node-gyp.js');
      } catch {
        return undefined;
      }
    })(),
    '/usr/lib/node_modules/npm/node_modules/node-gyp/bin/node-gyp.js',
    '/usr/local/lib/node_modules/npm/node_modules/node-gyp/bin/node-gyp.js',
    '/usr/share/nodejs/node-gyp/bin/node-gyp.js',
  ];
  const found = candidates.find((c) => c && existsSync(c));
  if (!found) throw new Error('node-gyp not found (it comes with npm)');
  return found;
}
