import { useState } from "preact/hooks";
import { beginOidc, devSignIn, type ClientConfig, type Session } from "../auth/session";

export function SignIn({ config, onSession }: { config: ClientConfig; onSession: (s: Session) => void }) {
  const [user, setUser] = useState("");
  const [error, setError] = useState("");
  const [busy, setBusy] = useState(false);
  const submit = async (e: Event) => {
    e.preventDefault();
    setBusy(true);
    setError("");
    try {
      onSession(await devSignIn(user.trim()));
    } catch (err) {
      setError(err instanceof Error ? err.message : String(err));
    } finally {
      setBusy(false);
    }
  };
  return (
    <main class="signin">
      <h1>voxmesh</h1>
      <p>Push-to-talk voice messages, live.</p>
      {config.devSignIn && (
        <form onSubmit={submit} aria-label="Developer sign-in">
          <label for="user">User name</label>
          <input id="user" name="user" autoComplete="username" value={user} required pattern="[A-Za-z0-9][A-Za-z0-9._:@\-]{0,127}"
            onInput={(e) => setUser((e.target as HTMLInputElement).value)} />
          <button type="submit" disabled={busy || !user.trim()}>Sign in</button>
          <p class="hint">Local development only: any user name signs in.</p>
        </form>
      )}
      {config.oidc && (
        <button type="button" onClick={() => beginOidc(config.oidc!).catch((e: unknown) => setError(String(e)))}>
          Sign in with your account
        </button>
      )}
      {!config.devSignIn && !config.oidc && <p role="alert">No sign-in is configured for this site: set auth.provider = "oidc" with auth.issuer.</p>}
      {error && <p role="alert" class="error">{error}</p>}
    </main>
  );
}
