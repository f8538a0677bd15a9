/** Signing in: a dev token locally, OpenID Connect (authorization code + PKCE) elsewhere. */
import { authorizeUrl, codeChallenge, codeVerifier, jwtClaims, tokenRequestBody } from "./pkce";

export interface ClientConfig {
  environment: string;
  devSignIn: boolean;
  oidc: { issuer: string; clientId: string; scope: string } | null;
}

export interface Session {
  token: string;
  userId: string;
  expiresAt: number; // ms since the epoch
}

const KEY = "voxmesh.session";
const PENDING = "voxmesh.oidc";
export const CALLBACK_PATH = "/auth/callback";

export async function loadConfig(): Promise<ClientConfig> {
  const res = await fetch("/config.json", { cache: "no-store" });
  if (!res.ok) throw new Error(`cannot load the app's settings (HTTP ${res.status})`);
  return (await res.json()) as ClientConfig;
}

export function sessionFromToken(token: string): Session {
  const claims = jwtClaims(token);
  const sub = claims["sub"];
  const exp = claims["exp"];
  if (typeof sub !== "string" || !sub) throw new Error("the token names no user (no sub claim)");
  return { token, userId: sub, expiresAt: typeof exp === "number" ? exp * 1000 : Date.now() + 3600_000 };
}

export function storedSession(storage: Storage = sessionStorage): Session | null {
  const raw = storage.getItem(KEY);
  if (!raw) return null;
  const s = JSON.parse(raw) as Session;
  return s.expiresAt > Date.now() + 30_000 ? s : null;
}

export function saveSession(s: Session, storage: Storage = sessionStorage): void {
  storage.setItem(KEY, JSON.stringify(s));
}

export function signOut(storage: Storage = sessionStorage): void {
  storage.removeItem(KEY);
}

export async function devSignIn(user: string): Promise<Session> {
  const res = await fetch("/auth/dev-token", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ user }),
  });
  const body = (await res.json().catch(() => ({}))) as { token?: string; error?: string };
  if (!res.ok || !body.token) throw new Error(body.error ?? `sign-in failed (HTTP ${res.status})`);
  const s = sessionFromToken(body.token);
  saveSession(s);
  return s;
}

interface Discovery {
  authorization_endpoint: string;
  token_endpoint: string;
}

async function discover(issuer: string): Promise<Discovery> {
  const res = await fetch(`${issuer.replace(/\/$/, "")}/.well-known/openid-configuration`);
  if (!res.ok) throw new Error(`the identity provider ${issuer} did not answer (HTTP ${res.status})`);
  return (await res.json()) as Discovery;
}

/** Leaves the page for the issuer's sign-in; it comes back to CALLBACK_PATH. */
export async function beginOidc(oidc: NonNullable<ClientConfig["oidc"]>): Promise<never> {
  const d = await discover(oidc.issuer);
  const verifier = codeVerifier();
  const state = codeVerifier();
  const nonce = codeVerifier();
  sessionStorage.setItem(PENDING, JSON.stringify({ verifier, state }));
  location.assign(
    authorizeUrl({
      authorizationEndpoint: d.authorization_endpoint,
      clientId: oidc.clientId,
      redirectUri: location.origin + CALLBACK_PATH,
      scope: oidc.scope,
      state,
      nonce,
      challenge: await codeChallenge(verifier),
    }),
  );
  return new Promise<never>(() => {});
}

/** On CALLBACK_PATH: trade the code for tokens. The ID token is the bearer the routers verify. */
export async function completeOidc(oidc: NonNullable<ClientConfig["oidc"]>, url: URL): Promise<Session> {
  const pending = JSON.parse(sessionStorage.getItem(PENDING) ?? "null") as { verifier: string; state: string } | null;
  sessionStorage.removeItem(PENDING);
  const error = url.searchParams.get("error");
  if (error) throw new Error(`sign-in was refused: ${url.searchParams.get("error_description") ?? error}`);
  const code = url.searchParams.get("code");
  if (!pending || !code || url.searchParams.get("state") !== pending.state) {
    throw new Error("this sign-in answer does not match a sign-in started here: start again");
  }
  const d = await discover(oidc.issuer);
  const res = await fetch(d.token_endpoint, {
    method: "POST",
    headers: { "content-type": "application/x-www-form-urlencoded" },
    body: tokenRequestBody(code, pending.verifier, oidc.clientId, location.origin + CALLBACK_PATH),
  });
  const body = (await res.json().catch(() => ({}))) as { id_token?: string; access_token?: string; error?: string };
  const token = body.id_token ?? body.access_token;
  if (!res.ok || !token) throw new Error(`the identity provider refused the code: ${body.error ?? res.status}`);
  const s = sessionFromToken(token);
  saveSession(s);
  history.replaceState(null, "", "/");
  return s;
}
