#!/usr/bin/env node
// `npm run log-codes`: writes packaging/mtaproxy.catalog and docs/log-codes.md from the event table
// (src/log/message-ids.ts), through the build in dist/ (run `npm run build` first; the npm script does).
import { writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const { renderCatalog, renderLogCodes } = await import(join(ROOT, 'dist/log/catalog.js'));
writeFileSync(join(ROOT, 'packaging/mtaproxy.catalog'), renderCatalog());
writeFileSync(join(ROOT, 'docs/log-codes.md'), renderLogCodes());
process.stderr.write('log-codes: wrote packaging/mtaproxy.catalog and docs/log-codes.md\n');
