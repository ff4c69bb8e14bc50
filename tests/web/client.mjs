// The browser portal's side of tests/grpc_web.rs: connect-web's gRPC-Web
// transport (the one a page uses; Node 20 has fetch) against the running
// gateway, with the messages generated from proto/ into gen/ by
// `buf generate` (see buf.gen.yaml). It sends the Origin a page would send,
// the insecure-dev identity headers, a deadline and a traceparent, and prints
// one JSON object with what each call answered, for the Rust test to judge.
//
// Usage: node client.mjs '<plan as JSON>'
//   plan: { url, origin, principal, groups, create, tags, prefix, resolve, invalid }

import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { RepositoryService } from "./gen/ecrgateway/v1/repository_pb.js";
import { ImageService } from "./gen/ecrgateway/v1/image_pb.js";

const plan = JSON.parse(process.argv[2] ?? "{}");
for (const key of ["url", "origin", "principal", "groups", "create", "prefix", "resolve", "invalid"]) {
  if (!plan[key]) {
    console.error(`client.mjs: the plan has no "${key}"`);
    process.exit(2);
  }
}

// What a browser adds to every request of a page on `plan.origin`.
const asPage = (next) => async (req) => {
  req.header.set("origin", plan.origin);
  return await next(req);
};

const transport = createGrpcWebTransport({
  baseUrl: plan.url,
  useBinaryFormat: true,
  interceptors: [asPage],
});
const repositories = createClient(RepositoryService, transport);
const images = createClient(ImageService, transport);

const identity = {
  "x-ecr-gateway-principal": plan.principal,
  "x-ecr-gateway-groups": plan.groups,
  traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
};
const options = { headers: identity, timeoutMs: 15000 };

// Runs one call; its answer, or its error with the gRPC code and details.
async function attempt(call) {
  try {
    return { ok: true, answer: await call() };
  } catch (error) {
    const e = ConnectError.from(error);
    return {
      ok: false,
      code: e.code,
      codeName: Code[e.code],
      message: e.rawMessage,
      details: e.details.map((d) => ("desc" in d ? d.desc.typeName : d.type)),
    };
  }
}

const result = {};

const created = await attempt(() =>
  repositories.createRepository({ repository: plan.create, settings: { tags: plan.tags ?? {} } }, options),
);
result.create = created.ok
  ? { ok: true, repository: created.answer.repository?.repository, uri: created.answer.repository?.uri }
  : created;

const listed = await attempt(() => repositories.listRepositories({ prefix: plan.prefix, pageSize: 100 }, options));
result.list = listed.ok
  ? { ok: true, repositories: listed.answer.repositories.map((r) => r.repository) }
  : listed;

const resolved = await attempt(() => images.resolveImage({ reference: plan.resolve }, options));
result.resolve = resolved.ok
  ? { ok: true, digest: resolved.answer.digest, pinnedUri: resolved.answer.pinnedUri }
  : resolved;

result.invalid = await attempt(() =>
  repositories.createRepository({ repository: plan.invalid, settings: { tags: plan.tags ?? {} } }, options),
);

// No identity headers: the identity layer must refuse it as it would over gRPC.
result.anonymous = await attempt(() => repositories.listRepositories({ prefix: plan.prefix }, { timeoutMs: 15000 }));

console.log(JSON.stringify(result));
