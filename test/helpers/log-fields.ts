// What src/ logs, read from its syntax tree (the TypeScript compiler API): every object literal
// with a `mtaproxy_event: '<kind>'` property is a log record's fields. Its property names, those of
// object literals it spreads (`...fields` where `const fields = { … }` is in scope in the same
// file), become journald fields, upper-cased. Used by test/unit/operations-doc.test.ts.
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import ts from 'typescript';

function sources(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => (e.isDirectory() ? sources(join(dir, e.name)) : e.name.endsWith('.ts') ? [join(dir, e.name)] : []));
}

export interface LoggedRecord {
  file: string;
  line: number;
  event: string;
  /** field names as logged (lower-case); "?" marks a spread that could not be resolved */
  fields: string[];
}

/** Every record literal in `srcDir` with the fields it carries. */
export function loggedRecords(srcDir: string): LoggedRecord[] {
  const out: LoggedRecord[] = [];
  for (const file of sources(srcDir)) {
    const sf = ts.createSourceFile(file, readFileSync(file, 'utf8'), ts.ScriptTarget.Latest, true);
    /** object-literal initializers of `const NAME = { … }` anywhere in the file (names are not reused for other shapes) */
    const literals = new Map<string, ts.ObjectLiteralExpression>();
    const collect = (node: ts.Node): void => {
      if (ts.isVariableDeclaration(node) && ts.isIdentifier(node.name) && node.initializer && ts.isObjectLiteralExpression(node.initializer)) literals.set(node.name.text, node.initializer);
      ts.forEachChild(node, collect);
    };
    collect(sf);
    /** the literal's fields, spreads resolved; "?" for a spread of something else (a call, a parameter) */
    const fieldsOf = (obj: ts.ObjectLiteralExpression, depth = 0): { fields: string[]; event?: string } => {
      const fields: string[] = [];
      let event: string | undefined;
      for (const p of obj.properties) {
        if (ts.isSpreadAssignment(p)) {
          const inner: ts.ObjectLiteralExpression[] = [];
          if (ts.isIdentifier(p.expression) && literals.has(p.expression.text)) inner.push(literals.get(p.expression.text) as ts.ObjectLiteralExpression);
          else {
            // `...(cond ? { a } : {})`: every literal inside counts
            const find = (n: ts.Node): void => (ts.isObjectLiteralExpression(n) ? void inner.push(n) : ts.isCallExpression(n) ? undefined : ts.forEachChild(n, find));
            if (!ts.isCallExpression(p.expression) && !ts.isIdentifier(p.expression)) find(p.expression);
          }
          if (inner.length === 0 || depth > 5) fields.push('?');
          for (const o of inner) {
            const r = fieldsOf(o, depth + 1);
            fields.push(...r.fields);
            event ??= r.event;
          }
        } else if ((ts.isPropertyAssignment(p) || ts.isShorthandPropertyAssignment(p)) && (ts.isIdentifier(p.name) || ts.isStringLiteral(p.name))) {
          if (p.name.text === 'mtaproxy_event') {
            if (ts.isPropertyAssignment(p) && ts.isStringLiteral(p.initializer)) event = p.initializer.text;
          } else fields.push(p.name.text);
        } else fields.push('?');
      }
      return { fields, ...(event === undefined ? {} : { event }) };
    };
    const visit = (node: ts.Node): void => {
      if (ts.isObjectLiteralExpression(node)) {
        const r = fieldsOf(node);
        if (r.event !== undefined) out.push({ file, line: sf.getLineAndCharacterOfPosition(node.getStart()).line + 1, event: r.event, fields: [...new Set(r.fields)] });
      }
      ts.forEachChild(node, visit);
    };
    visit(sf);
  }
  return out;
}
