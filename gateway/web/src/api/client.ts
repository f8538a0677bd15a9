/** The RouterService client over gRPC-web, same origin (Envoy serves the app and the API). */
import { Code, ConnectError, createClient, type Client, type Interceptor } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { RouterService } from "../gen/voxmesh/router/v1/router_service_pb";

export type Router = Client<typeof RouterService>;

export function createRouter(token: () => string, baseUrl: string = location.origin): Router {
  const auth: Interceptor = (next) => async (req) => {
    req.header.set("authorization", `Bearer ${token()}`);
    return next(req);
  };
  const transport = createGrpcWebTransport({ baseUrl, interceptors: [auth] });
  return createClient(RouterService, transport);
}

/** What went wrong, in words a user can act on. */
export function errorText(err: unknown): string {
  if (err instanceof ConnectError) {
    const detail = err.rawMessage || Code[err.code];
    switch (err.code) {
      case Code.Unauthenticated:
        return `You are signed out (${detail}). Sign in again.`;
      case Code.PermissionDenied:
        return `Not allowed: ${detail}`;
      case Code.NotFound:
        return `Not found: ${detail}`;
      case Code.InvalidArgument:
        return `The server refused it: ${detail}`;
      case Code.ResourceExhausted:
        return `Too much at once: ${detail}. Try again in a moment.`;
      case Code.Unavailable:
        return `The service is unreachable (${detail}). Retrying…`;
      case Code.FailedPrecondition:
        return `Not possible now: ${detail}`;
      case Code.Canceled:
        return "Cancelled.";
      default:
        return `${Code[err.code] ?? "Error"}: ${detail}`;
    }
  }
  if (err instanceof Error) return err.message;
  return String(err);
}

/** Calls worth retrying as they are (the call is idempotent and the failure transient). */
export function isTransient(err: unknown): boolean {
  return (
    err instanceof ConnectError &&
    (err.code === Code.Unavailable || err.code === Code.Aborted || err.code === Code.DeadlineExceeded || err.code === Code.Unknown)
  );
}

export { Code, ConnectError };
