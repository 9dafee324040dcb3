import { fileURLToPath } from 'node:url';
import { defineConfig } from 'vitest/config';

const src = (p: string) => fileURLToPath(new URL(p, import.meta.url));

// Tests run against the TypeScript sources (no build needed); `npm run build` checks types.
const alias = [
  { find: /^@livebase\/client\/node$/, replacement: src('./packages/client/src/node.ts') },
  { find: /^@livebase\/client$/, replacement: src('./packages/client/src/index.ts') },
  { find: /^@livebase\/react$/, replacement: src('./packages/react/src/index.ts') },
];

export default defineConfig({
  resolve: { alias },
  test: {
    projects: [
      {
        resolve: { alias },
        test: {
          name: 'unit',
          include: ['packages/client/test/**/*.test.ts'],
          environment: 'node',
          testTimeout: 10_000,
        },
      },
      {
        resolve: { alias },
        test: {
          name: 'react',
          include: ['packages/react/test/**/*.test.{ts,tsx}'],
          environment: 'happy-dom',
          testTimeout: 10_000,
        },
      },
      {
        resolve: { alias },
        test: {
          name: 'integration',
          include: ['test/integration/**/*.test.ts'],
          environment: 'node',
          // Each test starts its own server: give it room, but bound everything.
          testTimeout: 60_000,
          hookTimeout: 30_000,
        },
      },
    ],
  },
});
