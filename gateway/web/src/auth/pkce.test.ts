import { describe, expect, it } from "vitest";
import { uuidv7 } from "../api/ids";
import { authorizeUrl, base64url, codeChallenge, jwtClaims, tokenRequestBody } from "./pkce";

describe("PKCE and OIDC helpers", () => {
  it("computes the S256 challenge: BASE64URL(SHA-256(verifier)) without padding", async () => {
    // Python: base64.urlsafe_b64encode(hashlib.sha256(b"...").digest()).rstrip(b"=")
    expect(await codeChallenge("dBjftJeZ4CVP-mJ92IZ0TOIjZ6BPx8xCj4wXtd55tcM")).toBe("6juZ1U-o4fNokKFBv1oofFpNYDlpMPgcr8M_6_ZyCPE");
    expect(base64url(new Uint8Array([251, 255]))).toBe("-_8");
  });

  it("builds the authorization request and the token request", () => {
    const url = new URL(
      authorizeUrl({
        authorizationEndpoint: "https://issuer.example/authorize",
        clientId: "web",
        redirectUri: "https://app.example/auth/callback",
        scope: "openid profile",
        state: "s",
        nonce: "n",
        challenge: "c",
      }),
    );
    expect(Object.fromEntries(url.searchParams)).toEqual({
      response_type: "code",
      client_id: "web",
      redirect_uri: "https://app.example/auth/callback",
      scope: "openid profile",
      state: "s",
      nonce: "n",
      code_challenge: "c",
      code_challenge_method: "S256",
    });
    expect(tokenRequestBody("code", "v", "web", "https://app.example/auth/callback").get("code_verifier")).toBe("v");
  });

  it("reads a token's claims and makes time-ordered UUIDv7 ids", () => {
    const payload = base64url(new TextEncoder().encode(JSON.stringify({ sub: "alice", exp: 9 })));
    expect(jwtClaims(`x.${payload}.y`)).toEqual({ sub: "alice", exp: 9 });
    const a = uuidv7(1_000, new Uint8Array(10));
    const b = uuidv7(2_000, new Uint8Array(10).fill(255));
    expect(a).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
    expect(a < b).toBe(true);
  });
});
