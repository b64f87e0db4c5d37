// A small client against the generated types: if the OpenAPI document changes shape in a
// way that breaks callers, `tsc` fails here.
import createClient from "openapi-fetch";
import type { components, paths } from "./schema";

type Image = components["schemas"]["ImageOut"];
type Problem = components["schemas"]["Problem"];

export async function roundTrip(baseUrl: string, apiKey: string, photo: Blob): Promise<string> {
  const client = createClient<paths>({
    baseUrl,
    headers: { Authorization: `Bearer ${apiKey}` },
  });

  // Multipart upload. openapi-typescript types `format: binary` as string (the openapi-fetch
  // docs' convention), and this body has two content types, so the serializer narrows it.
  type Multipart = paths["/v1/images"]["post"]["requestBody"]["content"]["multipart/form-data"];
  const upload: Multipart = { file: photo as unknown as string, visibility: "private" };
  const created = await client.POST("/v1/images", {
    body: upload,
    bodySerializer(body) {
      const fields = body as Multipart;
      const form = new FormData();
      form.append("file", fields.file as unknown as Blob, "photo.jpg");
      if (fields.visibility) form.append("visibility", fields.visibility);
      return form;
    },
    params: { header: { "Idempotency-Key": crypto.randomUUID() } },
  });
  if (created.error) {
    const problem: Problem = created.error;
    throw new Error(`${problem.status} ${problem.code}: ${problem.detail}`);
  }
  const image: Image = created.data;

  const fetched = await client.GET("/v1/images/{image_id}", {
    params: { path: { image_id: image.id } },
  });
  const width: number | undefined = fetched.data?.width;

  const page = await client.GET("/v1/images", { params: { query: { limit: 10 } } });
  const next: string | null | undefined = page.data?.next_cursor;

  const bytes = await client.GET("/v1/images/{image_id}/content", {
    params: { path: { image_id: image.id } },
    parseAs: "blob",
  });
  const thumb = await client.GET("/v1/images/{image_id}/variants/{spec}", {
    params: { path: { image_id: image.id, spec: "256x256" }, query: { fit: "cover", format: "webp" } },
    parseAs: "blob",
  });

  const patched = await client.PATCH("/v1/images/{image_id}", {
    params: { path: { image_id: image.id } },
    body: { visibility: "public" },
  });
  const visibility: "private" | "public" | undefined = patched.data?.visibility;

  const deleted = await client.DELETE("/v1/images/{image_id}", {
    params: { path: { image_id: image.id } },
  });
  return `${image.id} ${width} ${next} ${bytes.response.status} ${thumb.response.status} ${visibility} ${deleted.response.status}`;
}
