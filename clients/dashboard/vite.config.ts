import { defineConfig } from 'vite';
import react from '@vitejs/plugin-react';
import { fileURLToPath } from 'node:url';

const here = (p: string) => fileURLToPath(new URL(p, import.meta.url));

// The build goes into the server crate (embedded with include_dir) and is committed; it must
// be byte-for-byte reproducible, so no timestamps, no absolute paths, hashed names only.
export default defineConfig({
  base: '/_/',
  plugins: [react()],
  resolve: {
    // The project's own SDK, from source (no separate build step needed).
    alias: {
      '@livebase/client': here('../js/packages/client/src/index.ts'),
      '@livebase/react': here('../js/packages/react/src/index.ts'),
    },
    dedupe: ['react', 'react-dom'],
  },
  build: {
    outDir: here('../../crates/livebase-server/dashboard-dist'),
    emptyOutDir: true,
    sourcemap: false,
    modulePreload: { polyfill: false },
    chunkSizeWarningLimit: 1000,
  },
});
