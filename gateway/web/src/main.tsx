import { render } from "preact";
import { useEffect, useState } from "preact/hooks";
import "./diagnostics";
import "./style.css";
import { CALLBACK_PATH, completeOidc, loadConfig, storedSession, type ClientConfig, type Session } from "./auth/session";
import { AppModel } from "./state/app";
import { App } from "./ui/App";
import { SignIn } from "./ui/SignIn";

function Root() {
  const [config, setConfig] = useState<ClientConfig | null>(null);
  const [session, setSession] = useState<Session | null>(storedSession());
  const [model, setModel] = useState<AppModel | null>(null);
  const [error, setError] = useState("");
  useEffect(() => {
    loadConfig()
      .then(async (c) => {
        setConfig(c);
        if (c.oidc && location.pathname === CALLBACK_PATH) setSession(await completeOidc(c.oidc, new URL(location.href)));
      })
      .catch((e: unknown) => setError(e instanceof Error ? e.message : String(e)));
  }, []);
  useEffect(() => {
    if (!session) return;
    const m = new AppModel(session);
    setModel(m);
    void m.start();
    return () => m.stop();
  }, [session]);
  if (error) return <p role="alert" class="error">{error}</p>;
  if (!session) return config ? <SignIn config={config} onSession={setSession} /> : <p>Loading…</p>;
  return model ? <App app={model} onSignOut={() => { setModel(null); setSession(null); }} /> : <p>Loading…</p>;
}

render(<Root />, document.getElementById("app")!);
