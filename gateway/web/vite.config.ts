import { defineConfig } from "vitest/config";

// The app is served same-origin behind Envoy (`make up` builds it; the web gateway serves
// dist/), so no dev proxy is configured here.
export default defineConfig({
  build: { target: "es2022", sourcemap: false },
  test: { environment: "node", include: ["src/**/*.test.ts"] },
});
